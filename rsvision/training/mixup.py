"""Mixup and CutMix of a multi-resolution training batch, through timm's ``Mixup``.

The mix is drawn once per batch on the crops at the largest resolution r_1, before the
per-resolution resize (:func:`rsvision.data.transforms.batch_resolutions`), so the S inputs
of an image are one mixed image at S sizes and share one mixed label. The mixed label (a
distribution over the classes) is the target of every term against labels: L_cls (with
``train.label_smoothing`` applied there, as to hard labels) and L_ens; L_dis compares
predictions and is unchanged. The batch keeps its hard labels for the training accuracy.
"""

from __future__ import annotations

from typing import Any

import torch

from rsvision.data.transforms import InputFormat, batch_resolutions
from rsvision.errors import UserError
from rsvision.recipe import Recipe

#: The batch key of the mixed targets (``[N, C]`` class probabilities).
MIXED_TARGET = "mixed_target"


def loss_target(batch: dict[str, Any]) -> torch.Tensor:
    """What the loss compares with: the mixed target of a mixed batch, else the labels."""
    return batch.get(MIXED_TARGET, batch["target"])


class BatchMix:
    """``train.mixup`` on a training batch (module docstring)."""

    def __init__(self, recipe: Recipe, num_classes: int, input_format: InputFormat) -> None:
        from timm.data import Mixup

        cfg = recipe.train.mixup
        if recipe.task != "cls":
            raise UserError(f"{recipe.source}: train.mixup: mixes the labels of classification; task '{recipe.task}' has none to mix")
        if recipe.data.resize != "batch":
            raise UserError(f"{recipe.source}: train.mixup: mixes the batch before it is resized; set data.resize: batch")
        if recipe.data.batch_size % 2:
            raise UserError(f"{recipe.source}: train.mixup: timm's Mixup pairs the images of a batch; data.batch_size must be even, not {recipe.data.batch_size}")
        self.resolution = max(recipe.resolutions)
        self.input_format = input_format
        # Smoothing belongs to L_cls alone (MREDLoss), so the mix itself is unsmoothed.
        self.mix = Mixup(
            mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.prob, switch_prob=cfg.switch_prob,
            label_smoothing=0.0, num_classes=num_classes,
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its r_1 crops mixed (as network inputs, normalised) and its mixed target."""
        x = batch_resolutions(batch, [self.resolution], self.input_format)[0].clone()  # mixed in place
        x, mixed = self.mix(x, batch["target"])
        return {**batch, "image": x, MIXED_TARGET: mixed}
