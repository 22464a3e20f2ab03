"""Data-parallel training on CPU: two processes (torchrun, gloo) against one.

With plain BN each process normalises with the statistics of its own per-process batch.
Two processes with batch B each therefore compute exactly what one process computes with
two accumulated micro-batches of B (``train.grad_accum: 2``): the same samples meet the same
BN batches, and the averaged gradients are equal. That is the equivalence tested here, for
the weights and alpha after two epochs (8 optimiser steps), with the low-memory step on the
two processes and the standard step on the one. BN running statistics are not compared:
one process updates them twice per step (once per micro-batch), each of the two processes
once; the saved ones are the main process's.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("distributed_run.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str) -> list[str]:
    """The command that runs the script on ``nproc`` processes over loopback with ``args``;
    skips the test where torchrun is not installed."""
    if not TORCHRUN.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else "torchrun"
    return [torchrun, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(SCRIPT), *args]


def _launch(cmd: list[str], out: Path, cpu: bool = True) -> subprocess.Popen:
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent)} | ({"ACCELERATE_USE_CPU": "true"} if cpu else {})
    log = open(out / "log.txt", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out)


def _wait(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(timeout=170) == 0, (out / "log.txt").read_text()[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one, two = root / "one", root / "two"
    two_processes = _torchrun(2, str(two), "low", "1")  # skips before anything starts
    single = _launch([sys.executable, str(SCRIPT), str(one), "standard", "2"], one)
    double = _launch(two_processes, two)
    _wait(single, one)
    _wait(double, two)
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    return json.loads((one / "rank0.json").read_text()), ranks


def test_two_processes_really_run_over_gloo(runs):
    _, ranks = runs
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    assert ranks[0]["run_dir"] == ranks[1]["run_dir"]  # one run folder, chosen by the main process
    assert len(list(Path(ranks[0]["run_dir"]).parent.iterdir())) == 1


def test_two_processes_match_one_with_accumulation(runs):
    single, ranks = runs
    a = load_file(str(Path(single["run_dir"]) / "model.safetensors"))
    b = load_file(str(Path(ranks[0]["run_dir"]) / "model.safetensors"))
    assert a.keys() == b.keys()
    params = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert "mred.alpha" in params and not torch.equal(a["mred.alpha"], torch.ones(3))
    for k in params:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)


def test_sampler_shards_and_reshuffles(runs):
    single, ranks = runs
    n = 32  # training images; per process: 4 batches of 4 per epoch
    seen = [r["seen"] for r in ranks]
    for epoch in range(2):
        parts = [s[epoch * n // 2 : (epoch + 1) * n // 2] for s in seen]
        assert sorted(parts[0] + parts[1]) == list(range(n))  # disjoint halves of the data
        # batch k of the single process goes to process k mod 2: the same global order
        ordered = [parts[k % 2][(k // 2) * 4 : (k // 2 + 1) * 4] for k in range(8)]
        assert sum(ordered, []) == single["seen"][epoch * n : (epoch + 1) * n]
    assert single["seen"][:n] != single["seen"][n:]  # a new order in epoch 2


def test_two_processes_draw_the_same_width_subnetworks(tmp_path):
    """MutualNet over gloo: both processes draw the same sub-networks at every step."""
    out = tmp_path / "widths"
    cmd = _torchrun(2, str(out), "low", "1", "widths")
    _wait(_launch(cmd, out), out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and len(ranks[0]["draws"]) == 8  # 2 epochs x 4 steps
    assert ranks[0]["draws"] == ranks[1]["draws"]
    assert len({tuple(d) for d in ranks[0]["draws"]}) > 1  # and they change from step to step


def test_mutualnet_with_private_bn_trains_through_ddp(tmp_path):
    """The standard MutualNet step with a BN per sub-network trains only the drawn
    sub-networks' BN groups; DDP (world size 1 over gloo) must be told that parameters may go
    without a gradient, or it stops at the second step waiting for them."""
    out = tmp_path / "private"
    cmd = _torchrun(1, str(out), "standard", "1", "private")
    _wait(_launch(cmd, out), out)
    rank = json.loads((out / "rank0.json").read_text())
    assert (rank["world_size"], rank["backend"]) == (1, "gloo")
    assert len(rank["draws"]) == 16  # 2 epochs x 8 steps, every one trained
    assert all(len(draw) == 4 for draw in rank["draws"])  # at most 4 of the 3 x 3 BN groups learn in a step


def test_evaluation_counts_every_image_once(runs):
    _, ranks = runs
    log = [json.loads(line) for line in (Path(ranks[0]["run_dir"]) / "log.jsonl").read_text().splitlines()]
    rows = log[-1]["val"]
    assert [r["images"] for r in rows] == [10, 10, 10, 10]  # 3 resolutions + ensemble; 10 images split 6/4


def test_every_process_evaluates_the_main_process_buffers(runs):
    """BN running statistics follow each process's own shard; before evaluating, every process
    takes the main process's, so all evaluate (and the main process saves) one network."""
    _, ranks = runs
    assert len(ranks[0]["buffers"]) == 2  # one evaluation per epoch
    assert ranks[0]["buffers"] == ranks[1]["buffers"]


def test_auto_layout_is_chosen_before_wrapping_and_leaves_no_trace(tmp_path):
    """Several processes choose the layout on extra steps before DDP wraps the network (its
    gradient buckets keep the wrapped layout): the run equals one told the chosen layout."""

    def run(setting: str) -> Path:
        out = tmp_path / setting
        cmd = _torchrun(2, str(out), "standard", "1", f"channels_last={setting}")
        _wait(_launch(cmd, out), out)
        assert "bucket view strides" not in (out / "log.txt").read_text()
        return Path(json.loads((out / "rank0.json").read_text())["run_dir"])

    auto = run("auto")
    chosen = json.loads((auto / "state" / "progress.json").read_text())["layout"]
    told = run("true" if chosen == "channels_last" else "false")
    a, b = (load_file(str(r / "model.safetensors")) for r in (auto, told))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_launched_process_also_chooses_the_layout_before_wrapping(tmp_path):
    """DDP wraps the network of a launched process group of one process as well: its layout
    trial runs before, or the channels-last steps train against buckets of the other layout."""
    out = tmp_path / "one"
    cmd = _torchrun(1, str(out), "standard", "1", "channels_last=auto")
    _wait(_launch(cmd, out), out)
    assert "bucket view strides" not in (out / "log.txt").read_text()
    rank = json.loads((out / "rank0.json").read_text())
    assert (rank["world_size"], rank["backend"]) == (1, "gloo")
    assert len(rank["seen"]) == 2 * 32 + 4  # two epochs, and the trial's first batch, read before wrapping


@pytest.mark.cuda
def test_auto_layout_with_sync_bn_is_timed_on_the_gpu(tmp_path):
    """The layout trial of a process group runs on the GPU, where SyncBatchNorm runs (one NCCL process)."""
    out = tmp_path / "sync_bn"
    cmd = _torchrun(1, str(out), "standard", "1", "channels_last=auto", "sync_bn")
    _wait(_launch(cmd, out, cpu=False), out)
    rank = json.loads((out / "rank0.json").read_text())
    assert (rank["world_size"], rank["backend"]) == (1, "nccl")
    progress = json.loads((Path(rank["run_dir"]) / "state" / "progress.json").read_text())
    assert progress["layout"] in ("contiguous", "channels_last") and "ms" in progress["layout_reason"]
