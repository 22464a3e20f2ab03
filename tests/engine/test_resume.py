"""`rsvision train --resume` after a SIGKILL mid-epoch, with DataLoader workers, ends with the
weights of an uninterrupted run: the data order and every augmentation are functions of
(seed, epoch, index), whatever process or worker draws them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from conftest import tiny_recipe_dict
from safetensors.torch import load_file

RSVISION = [sys.executable, "-m", "rsvision.cli"]


def _recipe(tmp_path: Path) -> Path:
    data = tiny_recipe_dict(tmp_path, train={"epochs": 3})
    del data["train"]["channels_last"]  # the default layout, as a user runs it
    data["data"].update(workers=2, oversubscribe=True, crop_scale=[0.3, 1.0])  # workers even on a 2-core machine
    data["data"]["args"].update(train_size=400)  # 50 steps an epoch: time to be killed in the middle
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _train(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RSVISION, "train", str(recipe), "--quiet", *args], capture_output=True, text=True, timeout=600)


def _progress(runs: Path) -> dict | None:
    for path in runs.glob("*/state/progress.json"):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
    return None


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_dir.mkdir(), killed_dir.mkdir()
    assert _train(_recipe(full_dir)).returncode == 0

    recipe = _recipe(killed_dir)
    proc = subprocess.Popen([*RSVISION, "train", str(recipe), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while (_progress(killed_dir / "runs") or {}).get("epoch") != 1:
            assert proc.poll() is None, "the run ended before its first epoch was saved"
            time.sleep(0.05)
        time.sleep(1.0)  # into epoch 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _progress(killed_dir / "runs")["epoch"] == 1, "killed after epoch 2 was saved: not mid-epoch"

    resumed = _train(recipe, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    (full_run,), (killed_run,) = (list((d / "runs").iterdir()) for d in (full_dir, killed_dir))
    a, b = (load_file(str(run / "model.safetensors")) for run in (full_run, killed_run))
    assert a.keys() == b.keys()
    for key in a:
        if torch.cuda.is_available():  # the runs train on the GPU, where some cuDNN backward kernels add with atomics
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key
    log = [json.loads(line) for line in (killed_run / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]
