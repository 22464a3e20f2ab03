"""``train.channels_last``: a fixed layout, or ``auto`` timed on the run's own first steps."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_recipe_dict
from safetensors.torch import load_file
from torch import nn

import rsvision.engine.layout as layout_module
from rsvision.engine import train, trainer
from rsvision.engine.layout import LayoutChoice, onednn_hazard, to_layout
from rsvision.models import build_model
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS
from rsvision.training import method_for

CPU = SimpleNamespace(num_processes=1, device=torch.device("cpu"))


def _is_channels_last(module: nn.Module) -> bool:
    return module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous()


def _fake_clock(monkeypatch, readings):
    readings = iter(readings)
    monkeypatch.setattr(layout_module, "time", SimpleNamespace(perf_counter=lambda: next(readings)))


@pytest.mark.parametrize(
    "readings, expected",
    [
        # (start, end) of the timed steps: contiguous 3 s (or 1 s), then channels_last 1.5 s
        ([10, 13, 30, 31.5], "channels_last"),
        ([10, 11, 30, 31.5], "contiguous"),
    ],
)
def test_auto_runs_two_steps_in_each_layout_then_keeps_the_faster(monkeypatch, readings, expected):
    conv = nn.Conv2d(2, 4, 3)
    _fake_clock(monkeypatch, readings)
    choice = LayoutChoice("auto", None, conv, CPU)
    seen = []
    for _ in range(6):
        with choice.step() as layout:
            seen.append((layout, _is_channels_last(conv)))
    cl = torch.channels_last, True
    nchw = torch.contiguous_format, False
    final = cl if expected == "channels_last" else nchw
    assert seen == [nchw, nchw, cl, cl, final, final]
    assert choice.name == expected and choice.times == {"contiguous": readings[1] - readings[0], "channels_last": 1.5}


def test_a_given_or_saved_layout_is_used_from_the_first_step():
    conv = nn.Conv2d(2, 4, 3)
    forced = LayoutChoice(True, None, conv, CPU)
    assert forced.name == "channels_last" and _is_channels_last(conv)
    with forced.step() as layout:
        assert layout is torch.channels_last
    resumed = LayoutChoice("auto", "contiguous", conv, CPU)  # a resumed run keeps what it chose
    assert resumed.name == "contiguous" and not _is_channels_last(conv) and not resumed.trial


def _trained(tmp_path, channels_last):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path / str(channels_last), train={"channels_last": channels_last}))
    run = train(recipe, name="layout", quiet=True)
    progress = json.loads((run / "state" / "progress.json").read_text())
    return progress["layout"], load_file(str(run / "model.safetensors"))


def test_auto_trains_the_same_network_and_saves_its_choice(tmp_path):
    layout, auto = _trained(tmp_path, "auto")
    _, nchw = _trained(tmp_path, False)
    assert layout in ("contiguous", "channels_last")
    assert auto.keys() == nchw.keys()
    for key in auto:  # the layouts differ in rounding only
        torch.testing.assert_close(auto[key], nchw[key], rtol=1e-4, atol=1e-5)


def test_the_default_follows_the_device_rule_and_reads_no_clock(monkeypatch):
    monkeypatch.setattr(layout_module, "time", SimpleNamespace(perf_counter=lambda: pytest.fail("the default layout read a clock")))
    conv = nn.Conv2d(2, 4, 3)
    cpu = LayoutChoice("device", None, conv, CPU)
    assert (cpu.name, cpu.trial) == ("channels_last", []) and cpu.reason == "the rule for cpu, train.channels_last: device"
    with cpu.step() as layout:
        assert layout is torch.channels_last and _is_channels_last(conv)
    shortcut = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 8, 1, stride=2))
    hazard = LayoutChoice("device", None, shortcut, CPU)
    assert hazard.name == "contiguous" and hazard.reason.endswith("1 is a strided 1x1 convolution oneDNN cannot train channels-last")
    cuda = LayoutChoice("device", None, conv, SimpleNamespace(num_processes=1, device=torch.device("cuda")))
    assert cuda.name == "channels_last" and _is_channels_last(conv)


def _default_run(tmp_path, monkeypatch, step_seconds):
    """A run with the default layout while the clock says a step takes ``step_seconds`` (per layout, in trial order)."""
    ticks = iter([0.0, step_seconds[0], 10.0, 10.0 + step_seconds[1]])
    monkeypatch.setattr(layout_module, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    data = tiny_recipe_dict(tmp_path)
    del data["train"]["channels_last"]
    run = train(validate_recipe(data), name="default", quiet=True)
    return json.loads((run / "rsvision.json").read_text())["memory_layout"], load_file(str(run / "model.safetensors"))


def test_same_recipe_and_seed_give_the_same_weights_whatever_the_machine_load(tmp_path, monkeypatch):
    idle_layout, idle = _default_run(tmp_path / "idle", monkeypatch, (1.0, 3.0))  # contiguous would win a timing
    busy_layout, busy = _default_run(tmp_path / "busy", monkeypatch, (3.0, 1.0))  # channels_last would win
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where train() runs
    assert idle_layout == busy_layout and idle_layout["reason"].startswith(f"the rule for {device}, train.channels_last: device")
    assert idle.keys() == busy.keys()
    for k in idle:
        if device == "cpu":
            assert torch.equal(idle[k], busy[k]), k
        else:  # some cuDNN backward kernels add with atomics: equal to rounding, not bit for bit
            torch.testing.assert_close(idle[k], busy[k], rtol=1e-4, atol=1e-5, msg=k)


def test_the_log_and_the_metadata_say_a_given_layout_was_given(tmp_path, capsys):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"channels_last": False, "epochs": 1}))
    run = train(recipe, name="given")
    assert "memory layout: contiguous (train.channels_last: false)" in capsys.readouterr().err
    assert json.loads((run / "rsvision.json").read_text())["memory_layout"]["reason"] == "train.channels_last: false"


@pytest.mark.parametrize(
    "conv, hazard",
    [
        (nn.Conv2d(4, 8, 1, stride=2), True),  # 4 input channels < 16
        (nn.Conv2d(15, 8, 1, stride=(1, 2)), True),
        (nn.Conv2d(32, 32, 1, stride=2, groups=4), True),  # 8 per group
        (nn.Conv2d(16, 8, 1, stride=2), False),  # a whole block
        (nn.Conv2d(4, 8, 1, stride=1), False),  # not strided
        (nn.Conv2d(4, 8, 3, stride=2), False),  # not 1x1
    ],
)
def test_onednn_hazard_is_a_strided_1x1_convolution_below_a_channel_block(conv, hazard):
    assert onednn_hazard(nn.Sequential(nn.Identity(), conv)) == ("1" if hazard else None)


def test_channels_last_steps_on_the_cpu_leave_onednn_out_only_for_a_hazard_and_restore_it():
    """oneDNN 3.12 computes wrong weight gradients for a strided 1x1 convolution of 4 input
    channels in channels-last (relative error 0.99 at 28 px with AVX2); without oneDNN they match NCHW."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 1, stride=2, bias=False)
    x = torch.randn(16, 4, 28, 28)
    conv(x).square().sum().backward()
    expected, conv.weight.grad = conv.weight.grad, None
    with LayoutChoice(True, None, conv, CPU).step():
        assert not torch.backends.mkldnn.enabled
        conv(x.contiguous(memory_format=torch.channels_last)).square().sum().backward()
    assert torch.backends.mkldnn.enabled
    torch.testing.assert_close(conv.weight.grad, expected, rtol=1e-4, atol=1e-3)
    with LayoutChoice(False, None, conv, CPU).step():
        assert torch.backends.mkldnn.enabled
    whole = nn.Conv2d(16, 8, 1, stride=2)  # oneDNN is right here and 4x faster than PyTorch's own kernels
    with LayoutChoice(True, None, whole, CPU).step():
        assert torch.backends.mkldnn.enabled


def test_several_processes_time_the_layouts_on_the_training_device(tmp_path, monkeypatch):
    """The trial before DDP wraps the network runs where the run trains (a GPU: its timings,
    and SyncBatchNorm, which refuses CPU tensors), not where the network was built."""
    recipe = validate_recipe(tiny_recipe_dict(tmp_path))
    method = method_for(recipe)(build_model(recipe), TASKS.get("cls")(recipe), recipe)
    device = torch.device("meta")  # not where it was built
    seen = []
    monkeypatch.setattr(trainer, "_untraced_step", lambda m, batch, _: seen.append((next(m.parameters()).device, batch["image"].device)))
    choice = LayoutChoice("auto", None, method, SimpleNamespace(num_processes=1, device=device))
    trainer.choose_layout_unwrapped(choice, method, {"image": torch.zeros(2, 3, 16, 16), "target": torch.zeros(2, dtype=torch.long)}, choice.accelerator)
    assert seen == [(device, device)] * 4 and choice.name in ("contiguous", "channels_last")


def test_uint8_crops_enter_the_step_in_its_layout_and_targets_stay():
    batch = {"image": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "target": torch.zeros(2, 8, 8, dtype=torch.long)}
    out = to_layout(batch, torch.channels_last)
    assert out["image"].is_contiguous(memory_format=torch.channels_last) and not out["image"].is_contiguous()
    assert out["target"] is batch["target"]
