"""Training paths only a GPU takes, tested whenever CUDA is present (marked ``cuda``, skipped
elsewhere): SyncBatchNorm under DDP in a 1-process NCCL group, fp16 mixed precision with a
grad scaler, and ``train.compile: true`` with Inductor from training to evaluation."""

from __future__ import annotations

import json
import math
import os
import socket
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import tiny_recipe_dict
from safetensors.torch import load_file
from torch import nn

import rsvision
from rsvision.cli import main
from rsvision.engine import train
from rsvision.recipe import validate_recipe

pytestmark = pytest.mark.cuda


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def one_process_group() -> Iterator[None]:
    """Accelerate in an NCCL group of one process (what ``torchrun --nproc_per_node 1`` sets
    up), for one run: the engine's ``end_training`` ends the group."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def prepared(monkeypatch):
    """What ``Accelerator.prepare`` made of each run's training method, and the group it ran in."""
    seen: list[dict] = []
    real = Accelerator.prepare

    def prepare(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        module = getattr(out[0], "module", out[0])
        seen.append({
            "wrapper": type(out[0]).__name__,
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "sync_bn": sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules()),
            "device": next(module.parameters()).device.type,
        })  # fmt: skip
        return out

    monkeypatch.setattr(Accelerator, "prepare", prepare)
    return seen


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_sync_bn_trains_under_ddp_and_on_one_process_equals_plain_bn(tmp_path, prepared):
    """With one process SyncBatchNorm's batch is the process's batch, so the run is the
    plain-BN run's to rounding; both run as DDP over NCCL on the GPU."""
    weights = {}
    for sync in (True, False):
        recipe = validate_recipe(tiny_recipe_dict(tmp_path / str(sync), train={"sync_bn": sync, "epochs": 1, "max_steps_per_epoch": 4}))
        with one_process_group():
            run = train(recipe, name="sync", quiet=True)
        assert all(math.isfinite(v) for v in _losses(run))
        weights[sync] = load_file(str(run / "model.safetensors"))
    synced, plain = prepared
    assert (synced["wrapper"], synced["backend"], synced["device"]) == ("DistributedDataParallel", "nccl", "cuda")
    assert synced["sync_bn"] > 0 and plain["sync_bn"] == 0
    assert weights[True].keys() == weights[False].keys()
    for key, value in weights[True].items():
        torch.testing.assert_close(value, weights[False][key], rtol=1e-4, atol=1e-5, msg=key)


def test_fp16_trains_with_a_grad_scaler_and_the_run_loads(tmp_path, monkeypatch):
    scalers: list[str | None] = []
    real = Accelerator.backward

    def backward(self, loss, **kwargs):
        scalers.append(type(self.scaler).__name__ if self.scaler is not None else None)
        return real(self, loss, **kwargs)

    monkeypatch.setattr(Accelerator, "backward", backward)
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"mixed_precision": "fp16", "epochs": 2}))
    run = train(recipe, name="fp16", quiet=True)
    assert scalers and set(scalers) == {"GradScaler"}
    assert all(math.isfinite(v) for v in _losses(run))
    saved = load_file(str(run / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())  # fp32 master weights
    model = rsvision.load(run, device="cuda")
    image = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    assert all(0 <= model.predict(image, r).index < 4 for r in (16, 12, 8))


def test_compile_with_inductor_from_training_to_evaluation(tmp_path, capsys):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, resolutions=[16, 8], train={"compile": True, "epochs": 1, "max_steps_per_epoch": 3}))
    run = train(recipe, name="compiled", quiet=True)
    assert not [k for k in load_file(str(run / "model.safetensors")) if "_orig_mod" in k]
    model = rsvision.load(run, device="cuda")
    image = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    assert all(0 <= model.predict(image, r).index < 4 for r in (16, 8))
    capsys.readouterr()
    main(["eval", str(run), "--device", "cuda", "--json"])
    rows = {row["subnet"]: row for row in json.loads(capsys.readouterr().out)["results"]}
    trained = {row["subnet"]: row for row in json.loads((run / "rsvision.json").read_text())["metrics"]}
    for subnet in ("16", "8"):  # evaluated eagerly now, compiled during training: the same predictions within one image
        assert abs(rows[subnet]["top1"] - trained[subnet]["top1"]) <= 100 / 16 + 1e-6
