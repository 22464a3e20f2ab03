"""Tiny trained runs and their ONNX exports, built once per test session and shared by the deployment tests."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_recipe_dict

from rsvision.engine import train
from rsvision.recipe import validate_recipe

_CACHE: dict[str, Path] = {}

SEG_RECIPE = {
    "task": "seg",
    "resolutions": [64, 32],
    "model": {"backbone": "resnet18_cifar", "head": "unet", "num_classes": 6,
              "backbone_args": {"width": 4, "stem_stride": 4}, "head_args": {"decoder_channels": [16, 8, 8]}},
    "data": {"dataset": "synthetic_seg", "batch_size": 4, "workers": 0, "args": {"train_size": 8, "val_size": 4, "image_size": 48}},
    "train": {"epochs": 1, "lr": 0.01, "seed": 0, "channels_last": False, "max_steps_per_epoch": 2},
}


def _once(name: str, tmp_path_factory, build) -> Path:
    if name not in _CACHE:
        _CACHE[name] = build(tmp_path_factory.mktemp(name))
    return _CACHE[name]


def cls_run(tmp_path_factory) -> Path:
    """Classification run at 16 and 8 px (resnet8, width 4), a few steps of training."""

    def build(tmp: Path) -> Path:
        recipe = tiny_recipe_dict(tmp, resolutions=[16, 8], train={"epochs": 1, "max_steps_per_epoch": 3})
        return train(validate_recipe(recipe), name="cls", quiet=True)

    return _once("cls_run", tmp_path_factory, build)


def seg_run(tmp_path_factory) -> Path:
    """Segmentation run at 64 and 32 px (ResNet-18 layout at width 4 + U-Net decoder)."""
    return _once("seg_run", tmp_path_factory, lambda tmp: train(validate_recipe({**SEG_RECIPE, "output_dir": str(tmp)}), name="seg", quiet=True))


def quant_run(tmp_path_factory) -> Path:
    """2-bit weights and activations (LQ-Nets), pre-activation ResNet-8 at width 4."""

    def build(tmp: Path) -> Path:
        recipe = tiny_recipe_dict(
            tmp, resolutions=[16, 8], train={"epochs": 1, "max_steps_per_epoch": 3},
            model={"backbone": "preact_resnet8", "num_classes": 4, "backbone_args": {"width": 4}},
            quant={"method": "lq", "weight_bits": 2, "act_bits": 2},
        )
        return train(validate_recipe(recipe), name="quant", quiet=True)

    return _once("quant_run", tmp_path_factory, build)


def cls_export(tmp_path_factory) -> Path:
    """The classification run exported at 16 (trained) and 12 (interpolated BN), through the CLI's --checkpoint form."""
    from rsvision.cli import main

    def build(tmp: Path) -> Path:
        main(["export", "--checkpoint", str(cls_run(tmp_path_factory)), "--format", "onnx", "--res", "16", "12", "-o", str(tmp / "onnx")])
        return tmp / "onnx"

    return _once("cls_export", tmp_path_factory, build)


def seg_export(tmp_path_factory) -> Path:
    from rsvision.deploy.export import export_onnx

    def build(tmp: Path) -> Path:
        export_onnx(seg_run(tmp_path_factory), tmp / "onnx")
        return tmp / "onnx"

    return _once("seg_export", tmp_path_factory, build)
