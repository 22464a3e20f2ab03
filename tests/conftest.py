"""Shared fixtures: a tiny classification recipe, a clean registry for user plugins, one thread;
tests marked ``cuda`` skipped where no CUDA device is present."""

import sys

import pytest
import torch

from rsvision.recipe import validate_recipe

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skipped, with the reason, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is false)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def tiny_recipe_dict(tmp_path, **overrides) -> dict:
    data = {
        "task": "cls",
        "resolutions": [16, 12, 8],
        "model": {"backbone": "resnet8", "num_classes": 4, "backbone_args": {"width": 4}},
        "data": {
            "dataset": "synthetic",
            "batch_size": 8,
            "workers": 0,
            "crop_scale": [0.5, 1.0],
            "args": {"train_size": 48, "val_size": 16, "image_size": 20, "num_classes": 4},
        },
        "train": {"epochs": 2, "lr": 0.05, "weight_decay": 0.0, "seed": 0, "channels_last": False},
        "output_dir": str(tmp_path / "runs"),
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        elif section == "train":  # keep the fast, deterministic defaults unless overridden
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    return data


@pytest.fixture
def tiny_recipe(tmp_path):
    return validate_recipe(tiny_recipe_dict(tmp_path))


@pytest.fixture
def clean_plugins():
    """Forget what a test's user plugins registered."""
    from rsvision import registry

    saved = {reg: dict(reg._entries) for reg in (registry.BACKBONES, registry.HEADS, registry.TASKS, registry.DATASETS)}
    modules = set(sys.modules)
    yield
    for reg, entries in saved.items():
        reg._entries = entries
    for name in set(sys.modules) - modules:
        if name.startswith(("user_", "rsvision_plugin_")):
            del sys.modules[name]


@pytest.fixture(scope="module")
def one_thread():
    """Tensors this small gain nothing from a second thread; on shared cores its spinning costs
    several times the CPU time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def plugin_backbone_source(name: str) -> str:
    """A plugin module registering a one-conv backbone as ``name`` (the backbone contract:
    ``out_channels``, ``output_stride``, a list of stage features)."""
    return f"""from torch import nn
from rsvision import register_backbone


class Tiny(nn.Module):
    out_channels = [6]
    output_stride = 1

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())

    def forward(self, x):
        return [self.body(x)]


@register_backbone("{name}")
def {name}():
    return Tiny()
"""


def crash_then_resume(recipe, monkeypatch):
    """Train ``recipe`` uninterrupted as ``full``; then as ``crashy``, stopped right after its
    first epoch is saved, and resumed. Returns both run folders."""
    from rsvision.engine import train
    from rsvision.engine import trainer as trainer_module

    full = train(recipe, name="full", quiet=True)
    real_save = trainer_module._save_epoch

    def crash_after_first_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "_save_epoch", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, name="crashy", quiet=True)
    monkeypatch.setattr(trainer_module, "_save_epoch", real_save)
    return full, train(recipe, name="crashy", resume=True, quiet=True)


def benchmark_script(name: str):
    """``benchmarks/NAME.py`` imported as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

