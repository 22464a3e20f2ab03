"""RefineNet (Lin et al., CVPR 2017), the segmentation head of RS-Nets App. B.

A cascade of RefineNet blocks runs from the deepest backbone stage to the shallowest.
Each block adapts its stage's feature (3x3 conv to the path width, two residual conv
units), fuses it with the upsampled output of the block above (multi-resolution
fusion), gathers context with chained residual pooling and ends with output conv
units. With a ResNet the shallowest stage is at stride 4, so the logits are too.

Widths follow the NYUDv2 model: 512 on the coarsest path, 256 on the others; CRP has
4 stages; dropout 0.5 on the two deepest backbone features and before the classifier.
The decoder has no BatchNorm: an RS-Net's private BNs live in the backbone only.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsvision.registry import register_head


def _conv3x3(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """RCU: x + conv(relu(conv(relu(x)))), the first conv with a bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels, bias=True)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ChainedResidualPooling(nn.Module):
    """CRP: each stage max-pools (5x5, stride 1) and convolves the previous stage's output; all are summed into x."""

    def __init__(self, channels: int, stages: int = 4) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList([_conv3x3(channels, channels) for _ in range(stages)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, top = x, x
        for conv in self.convs:
            top = conv(self.pool(top))
            out = out + top
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet block on one backbone stage.

    Args:
        in_channels: channels of the backbone stage.
        width: channels of this path.
        out_channels: channels handed to the next (finer) block; None for the last block.
        fused: whether a coarser block's output is added (every block but the first).
        crp_stages: number of chained pooling stages.
    """

    def __init__(self, in_channels: int, width: int, out_channels: int | None, fused: bool, crp_stages: int = 4) -> None:
        super().__init__()
        self.reduce = _conv3x3(in_channels, width)
        self.adapt = nn.Sequential(ResidualConvUnit(width), ResidualConvUnit(width))
        # Multi-resolution fusion: the coarser input arrives already projected to `width`.
        self.fuse = _conv3x3(width, width) if fused else None
        self.crp = ChainedResidualPooling(width, crp_stages)
        self.output = nn.Sequential(*[ResidualConvUnit(width) for _ in range(3)])
        self.project = _conv3x3(width, out_channels) if out_channels is not None else None

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        x = self.adapt(self.reduce(x))
        if self.fuse is not None:
            up = F.interpolate(coarser, size=x.shape[-2:], mode="bilinear", align_corners=True)
            x = self.fuse(x) + up
        x = self.output(self.crp(F.relu(x)))
        return self.project(x) if self.project is not None else x


class RefineNet(nn.Module):
    """The RefineNet cascade over any number of backbone stages (shallowest first).

    Args:
        in_channels: channels of the backbone stages, shallowest first.
        num_classes: output classes.
        widths: path widths, shallowest first (default 256 ... 256, 512 on the deepest).
        dropout: dropout on the two deepest features and before the classifier.
        crp_stages: chained residual pooling stages (4 for NYUDv2).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        widths: Sequence[int] | None = None,
        dropout: float = 0.5,
        crp_stages: int = 4,
    ) -> None:
        super().__init__()
        n = len(in_channels)
        widths = list(widths) if widths is not None else [256] * (n - 1) + [512]
        if len(widths) != n:
            raise ValueError(f"refinenet: {n} backbone stages need {n} widths, got {widths}")
        self.dropout = nn.Dropout(dropout)
        # Built coarsest first, the order they run in; block i hands the width of block i+1.
        order = list(range(n - 1, -1, -1))
        self.blocks = nn.ModuleList(
            [
                RefineNetBlock(
                    in_channels[i],
                    widths[i],
                    out_channels=widths[order[k + 1]] if k + 1 < n else None,
                    fused=k > 0,
                    crp_stages=crp_stages,
                )
                for k, i in enumerate(order)
            ]
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 3, padding=1, bias=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        deep = len(features) - 2
        features = [self.dropout(f) if i >= deep else f for i, f in enumerate(features)]
        x = None
        for block, feature in zip(self.blocks, reversed(features)):
            x = block(feature, x)
        return self.classifier(self.dropout(x))


@register_head("refinenet")
def refinenet(
    *,
    backbone: nn.Module,
    num_classes: int,
    widths: Sequence[int] | None = None,
    dropout: float = 0.5,
    crp_stages: int = 4,
) -> nn.Module:
    """RefineNet on all stage features of ``backbone``; logits at the stride of its first stage."""
    return RefineNet(backbone.out_channels, num_classes, widths, dropout, crp_stages)
