"""benchmarks/gpu_check.py --tiny: every check of the GPU machine's script runs here at tiny sizes
(on the CPU: a gloo group, fp16 and GPU-vs-CPU skipped with their reasons), so it cannot rot
before it meets a GPU. Each check passes or says why it was skipped; the JSON holds the numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"

CHECKS = [
    "ddp-mutualnet-private", "ddp-detection-metrics", "ddp-channels-last-auto", "recipe-widths-sync-bn",
    "lq-autocast-bf16", "lq-autocast-fp16", "compiled-run-loads", "fp16-grad-scaler", "rsnet-step",
    "loader", "cli-train-jpeg", "gpu-vs-cpu", "onnx-export", "compile-step",
]  # fmt: skip

#: The numbers each check must report, finite.
NUMBERS = {
    "rsnet-step": ["rsvision_images_per_s", "plain_images_per_s", "ratio", "single_32_images_per_s"],
    "loader": ["images_per_s_per_worker", "ms_per_image", "cores_for_rsnet_step", "cores_for_single_step"],
    "cli-train-jpeg": ["seconds_end_to_end"],
    "gpu-vs-cpu": ["max_abs_diff_over_scale"],
    "onnx-export": ["max_abs_diff"],
    "compile-step": ["first_step_s", "compiled_images_per_s", "eager_images_per_s", "speedup"],
    "lq-autocast-bf16": ["relative_error"],
    "lq-autocast-fp16": ["relative_error"],
}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--json", str(out / "result.json")],
        capture_output=True, text=True, timeout=600, env=env, cwd=out,
    )  # fmt: skip
    assert (out / "result.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "result.json").read_text())
    return proc, report, {c["name"]: c for c in report["checks"]}


def test_one_line_per_check_then_the_summary_and_the_exit_status(dry_run):
    proc, report, checks = dry_run
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("gpu_check: ") and "tiny sizes" in lines[0]
    assert [line.split()[:2] for line in lines[1:-1]] == [[checks[name]["status"], name] for name in CHECKS]
    failed = [name for name in CHECKS if checks[name]["status"] == "FAIL"]
    assert lines[-1].startswith(f"gpu_check: {len(CHECKS) - len(failed)} of {len(CHECKS)} passed or skipped")
    assert proc.returncode == (1 if failed else 0)
    assert report["tiny"] is True and report["seconds"] > 0


@pytest.mark.parametrize("name", CHECKS)
def test_check_passes_or_says_why_it_skipped(dry_run, name):
    _, report, checks = dry_run
    check = checks[name]
    assert check["status"] in ("PASS", "SKIP"), f"{name}: {check['detail']}"
    if check["status"] == "SKIP":
        assert report["device"] == "cpu" and check["detail"], "only a CPU skips, and it says why"


def test_the_numbers_are_there(dry_run):
    _, _, checks = dry_run
    for name, keys in NUMBERS.items():
        numbers = checks[name]["numbers"]
        for key in keys:
            assert isinstance(numbers.get(key), (int, float)) and math.isfinite(numbers[key]), (name, key, numbers)
    assert checks["rsnet-step"]["numbers"]["rsvision_images_per_s"] > 0 and checks["loader"]["numbers"]["images_per_s_per_worker"] > 0
