"""benchmarks/serving_scale.py --tiny: every cell of the sweep on a short trace, then --combine
of the cells written as JSON (a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from conftest import benchmark_script



def _benchmark():
    return benchmark_script("serving_scale")


def _profile(tmp_path: Path) -> Path:
    """A small table (ms per batch of 1, 4, 16) where the cheap sub-network serves 4x the rate."""
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({
        "slo_ms": 100,
        "latency_ms": {"big": {"1": 10, "4": 25, "16": 80}, "small": {"1": 4, "4": 7, "16": 20}},
        "accuracy": {"big": 90.0, "small": 70.0},
    }))
    return path


def test_cells_write_json_and_combine(tmp_path, capsys):
    bench = _benchmark()
    profile = _profile(tmp_path)
    common = ["--profile", str(profile), "--mean-rate", "150", "--duration", "30", "--startup-s", "3", "--down-s", "5", "--max-replicas", "8"]
    assert bench.main([*common, "--policy", "fixed", "--target-ongoing", "2", "--json", str(tmp_path / "f.json")]) in (0, 1)
    assert bench.main([*common, "--policy", "degrade", "--json", str(tmp_path / "d.json")]) in (0, 1)
    capsys.readouterr()
    fixed, degrade = (json.loads((tmp_path / name).read_text()) for name in ("f.json", "d.json"))
    assert fixed["trace"] == degrade["trace"] and fixed["trace"]["requests"] > 3000  # the same requests for both
    for cell in (fixed, degrade):
        r = cell["result"]
        assert r["requests"] == r["answered"] + r["dropped"] and 0 <= r["attainment"] <= 100
        assert 1 <= r["mean_replicas"] <= r["peak_replicas"] <= 8
        assert r["effective_accuracy"] <= cell["bound"]["accuracy"] + 1e-9  # no policy beats the fluid bound
    assert set(fixed["result"]["mix"]) == {"big"}
    code = bench.main(["--combine", str(tmp_path / "f.json"), str(tmp_path / "d.json")])
    printed = capsys.readouterr().out
    assert "| policy | attainment |" in printed and printed.count("| fixed, queue length") == 1
    assert sum(line.startswith(("PASS ", "FAIL ")) for line in printed.splitlines()) == 1
    assert code == (0 if "PASS " in printed else 1)


def test_bad_profile_is_one_line(tmp_path, capsys):
    assert _benchmark().main(["--profile", str(tmp_path / "none.json"), "--policy", "fixed"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --profile")
