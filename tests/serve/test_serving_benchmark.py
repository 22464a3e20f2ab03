"""benchmarks/serving.py --tiny: train a toy run, serve it with `rsvision serve` as a subprocess,
drive it with the load generator, combine: the benchmark's whole path, in seconds."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_script

pytest.importorskip("fastapi")


def _benchmark():
    return benchmark_script("serving")


def test_the_tiny_benchmark_serves_measures_and_combines(tmp_path, capsys):
    bench = _benchmark()
    out = tmp_path / "adaptive.json"
    assert bench.main(["--tiny", "--policies", "adaptive", "--loads", "step", "--json", str(out), "--plot", str(tmp_path / "serving.png")]) == 0
    piece = json.loads(out.read_text())
    profile = piece["profile"]
    assert set(profile["accuracy"]) == {"32", "16"} and all(a is not None for a in profile["accuracy"].values())
    assert max(profile["loads"]["step"]["rates"]) <= 40.0 + 1e-9  # --tiny scales the loads down
    assert len(profile["loads"]["step"]["rates"]) == 3  # 0.5x the largest's capacity, 0.9x the smallest's, back
    [cell] = piece["cells"]
    assert cell["policy"] == "adaptive" and cell["load"] == "step"
    result = cell["result"]
    assert result["overall"]["requests"] == sum(p["requests"] for p in result["phases"]) > 0
    assert result["overall"]["failed"] == 0
    printed = capsys.readouterr().out
    assert "| fluid bound |" in printed and "adaptive / bound" in printed
    assert sum(line.startswith(("PASS ", "FAIL ")) for line in printed.splitlines()) >= 2
    assert (tmp_path / "serving.png").read_bytes()[:4] == b"\x89PNG"
    # The pieces combine: the same file again is one more piece with the same profile.
    assert bench.main(["--combine", str(out), str(out)]) in (0, 1)
    assert "step load, SLO" in capsys.readouterr().out
