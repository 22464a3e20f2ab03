"""Backbones and heads, registered by name, and the model builder used by every task.

Backbone contract: ``forward(x)`` returns the list of stage features (strides 4, 8, 16,
32 for the built-in ones, last one deepest); attributes ``out_channels`` (per stage) and
``output_stride``. A head takes that list. Both get their BatchNorms made switchable.
"""

from __future__ import annotations

import torch
from torch import nn

from rsvision.models import backbones, heads  # noqa: F401  (registers the built-ins)
from rsvision.models.heads import ClassifierHead
from rsvision.models import preact_resnet  # noqa: F401  (registers the pre-activation ResNets)
from rsvision.models import refinenet, smp_heads  # noqa: F401  (registers the segmentation heads)
from rsvision.models.pretrained import load_pretrained
from rsvision.recipe import Recipe
from rsvision.registry import BACKBONES, HEADS, QUANTIZERS
from rsvision.switchable import RSNet


class EncoderDecoder(nn.Module):
    """``head(backbone(x))``: the body that :class:`RSNet` makes resolution-switchable."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def build_body(recipe: Recipe) -> nn.Module:
    m = recipe.model
    backbone = BACKBONES.build(m.backbone, **m.backbone_args)
    if m.pretrained:
        load_pretrained(backbone, m.pretrained, m.backbone)
    head = HEADS.build(m.head, backbone=backbone, num_classes=m.num_classes, **m.head_args)
    body = EncoderDecoder(backbone, head)
    if recipe.quant is not None:
        q = recipe.quant
        body = QUANTIZERS.build(q.method, model=body, **q.model_dump(exclude={"method"}), example_input=torch.zeros(1, 3, min(recipe.resolutions), min(recipe.resolutions)))
    return body


def build_model(recipe: Recipe) -> RSNet:
    """Backbone + head (+ quantizers) with private BN per resolution of the recipe."""
    return RSNet(build_body(recipe), recipe.resolutions, shared_bn=recipe.model.shared_bn)
