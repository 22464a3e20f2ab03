"""A tiny run whose interpolated BatchNorm is measurably off, for the calibration and plot tests.

The ``test_brightness`` dataset: the class is the image's brightness (dark or bright),
under a coarse grating of random orientation and a one-pixel checkerboard. Images stay in
[0, 1] (no mean/std), so zero padding darkens a border whose share grows as 1/resolution,
and the checkerboard survives only near full size: BN statistics are far from linear in
the resolution, and three short epochs leave the trained groups' running averages short
of the data's as well. In the shared run (trained at 32 and 8, seed 3) 32 is served at
100 %, 8 at 90 %, while the §4.3 interpolation misjudges the brightness threshold at 24
(84 %) and 16 (76 %); statistics measured at those resolutions restore 99-100 %.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from conftest import tiny_recipe_dict
from PIL import Image
from torch.utils.data import Dataset

from rsvision.cli import main
from rsvision.engine import train
from rsvision.recipe import validate_recipe
from rsvision.registry import register_dataset


class Brightness(Dataset):
    classes = ["dark", "bright"]

    def __init__(self, size: int, image_size: int, seed: int) -> None:
        self.size, self.image_size, self.seed = size, image_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(2))
        n = self.image_size
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        level = (0.44 if label == 0 else 0.56) + rng.uniform(-0.04, 0.04)
        along = yy if rng.integers(2) else xx
        grating = 0.1 * np.sin(2 * np.pi * along / (n / 3) + rng.uniform(0, 2 * np.pi))
        checker = np.where((yy + xx) % 2 == 0, 0.35, -0.35)
        image = (level + grating + checker)[..., None] + rng.normal(0, 0.03, size=(n, n, 3))
        return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)), label


@register_dataset("test_brightness", override=True)
def brightness(*, root=None, split: str = "train", train_size: int = 192, val_size: int = 128, image_size: int = 36, seed: int = 0) -> Dataset:
    return Brightness(train_size if split == "train" else val_size, image_size, seed * 2 + (split == "val"))


def train_run(tmp: Path, resolutions: list[int], epochs: int = 3, name: str = "bright", seed: int = 0) -> Path:
    """A resnet8 (width 4) run on ``test_brightness``, trained at ``resolutions``."""
    recipe = tiny_recipe_dict(
        tmp,
        resolutions=resolutions,
        model={"backbone": "resnet8", "num_classes": 2, "backbone_args": {"width": 4}},
        data={"dataset": "test_brightness", "batch_size": 16, "workers": 0, "crop_scale": [0.8, 1.0], "normalize": False},
        train={"epochs": epochs, "lr": 0.05, "seed": seed},
    )
    return train(validate_recipe(recipe), name=name, quiet=True)


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run folder, so that a test can calibrate it without touching others'."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("state"))
    return dest


_RUNS: dict[tuple[int, ...], Path] = {}


def shared_run(tmp_path_factory, resolutions: list[int], epochs: int = 3) -> Path:
    """One trained run per set of resolutions for the whole session (tests calibrate copies of it)."""
    key = tuple(resolutions)
    if key not in _RUNS:
        name = "rs" if len(resolutions) > 1 else f"i{resolutions[0]}"
        _RUNS[key] = train_run(tmp_path_factory.mktemp(name), resolutions, epochs, name, seed=3)
    return _RUNS[key]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``rsvision ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
