"""Where a trained network runs after training (``--device``) and the precision rule."""

import pytest
import torch
from torch import nn

from rsvision.analysis import device as dev
from rsvision.analysis.latency import median_ms
from rsvision.errors import UserError


def test_auto_is_cuda_when_present_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device(None) == dev.resolve_device("auto") == dev.resolve_device(" Auto ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == torch.device("cuda")


def test_named_devices(monkeypatch):
    assert dev.resolve_device("cpu") == dev.resolve_device("CPU") == dev.resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(
    "spec, cuda, message",
    [
        ("gpu", False, "--device gpu: not a device (expected auto, cpu, cuda, cuda:N or mps)"),
        ("cuda:x", False, "--device cuda:x: not a device"),
        ("", False, "--device : not a device"),
        ("meta", False, "--device meta: not supported here"),
        ("cuda", False, "--device cuda: CUDA is not available on this machine"),
        ("cuda:2", True, "--device cuda:2: this machine has 2 CUDA device(s), cuda:0..cuda:1"),
    ],
)
def test_a_bad_device_is_one_line_naming_the_option(monkeypatch, spec, cuda, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    with pytest.raises(UserError) as info:
        dev.resolve_device(spec)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "mixed, device, dtype",
    [
        ("bf16", "cuda", torch.bfloat16),
        ("fp16", "cuda:1", torch.float16),
        ("no", "cuda", None),
        (None, "cuda", None),
        ("bf16", "cpu", None),  # CPU results never depend on the option
        ("fp16", "mps", None),
    ],
)
def test_the_autocast_rule_takes_the_runs_precision_on_cuda_only(mixed, device, dtype):
    assert dev.autocast_dtype(mixed, device) is dtype


def test_the_rule_reads_the_recipe_and_the_modules_device(tiny_recipe, monkeypatch):
    net = nn.Linear(3, 2)
    tiny_recipe.train.mixed_precision = "bf16"
    assert dev.precision_name(tiny_recipe, net) == "fp32"
    with dev.inference_precision(tiny_recipe, net):  # on the CPU: float32, no autocast
        assert not torch.is_autocast_enabled("cpu") and net(torch.ones(1, 3)).dtype == torch.float32
    monkeypatch.setattr(dev, "device_of", lambda module: torch.device("cuda"))
    assert dev.precision_name(tiny_recipe, net) == "bf16"
    tiny_recipe.train.mixed_precision = "no"
    assert dev.precision_name(tiny_recipe, net) == "fp32"


def test_cuda_timing_waits_for_the_device_around_each_timed_call(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device)))
    median_ms(lambda: calls.append("call"), repeats=2, warmup=1, device="cuda")
    assert calls == ["call", ("sync", "cuda"), "call", ("sync", "cuda"), ("sync", "cuda"), "call", ("sync", "cuda")]
    calls.clear()
    median_ms(lambda: calls.append("call"), repeats=2, warmup=1, device="cpu")
    assert calls == ["call", "call", "call"]


@pytest.mark.cuda
def test_on_device_moves_and_restores():
    net = nn.Linear(3, 2)
    with dev.on_device(net, "cuda") as moved:
        assert dev.device_of(moved).type == "cuda"
    assert dev.device_of(net) == torch.device("cpu")
