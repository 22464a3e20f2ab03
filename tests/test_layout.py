"""``train.channels_last``: a fixed layout, or ``auto`` timed on the run's own first steps."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import rsvision.engine.layout as layout_module
from rsvision.engine import train
from rsvision.engine.layout import LayoutChoice
from rsvision.recipe import validate_recipe
from conftest import tiny_recipe_dict

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
