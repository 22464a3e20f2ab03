"""Pre-activation ResNets as LQ-Nets builds them for quantized activations (RS-Nets Table 3, 2/2).

The layout follows LQ-Nets' ``preresnet`` (used by RS-Nets' quantization code), which is
not He et al.'s pure pre-activation net: every conv is followed by its BN, and the block
input is pre-activated (BN-ReLU) only from the second block of a group on. A
:class:`~rsvision.quant.modules.QuantPoint` marks each place LQ-Nets quantizes activations:

- block input: after the BN-ReLU pre-activation (second block on); on the raw input of a
  group's first block when the group has stride 1; nowhere on the first block of a
  stride-2 group (its input was quantized at the end of the previous group);
- after the BN-ReLU of every conv but the block's last;
- at the end of every group, after its BN-ReLU, except the last group (its output is
  pooled by the float classifier).

The shortcut is the block's input before pre-activation, with a 1x1 conv + BN when the
shape changes (type B). Stage features are the group outputs, so the backbone contract
(features, ``out_channels``, ``output_stride``) holds. Without quantization the points are
identities and this is a plain (float) network.
"""

from __future__ import annotations

import torch
from torch import nn

from rsvision.models.backbones import StageBackbone
from rsvision.quant.modules import QuantPoint
from rsvision.registry import register_backbone


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def _preactivation(in_channels: int, mode: str) -> nn.Module:
    """``bnrelu``: BN-ReLU-Quant; ``quant``: Quant only; ``none``: nothing."""
    if mode == "bnrelu":
        return nn.Sequential(*_bn_relu(in_channels), QuantPoint())
    return QuantPoint() if mode == "quant" else nn.Identity()


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


class PreActBasicBlock(nn.Module):
    """preact → conv3x3-BN-ReLU-Quant → conv3x3-BN, plus the shortcut of the raw input."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, preact: str) -> None:
        super().__init__()
        self.preact = _preactivation(in_channels, preact)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False), *_bn_relu(channels), QuantPoint(),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
        )
        self.shortcut = _shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.preact(x)) + self.shortcut(x)


class PreActBottleneck(nn.Module):
    """preact → 1x1-BN-ReLU-Quant → 3x3 (stride)-BN-ReLU-Quant → 1x1 (x4)-BN, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, preact: str) -> None:
        super().__init__()
        out = channels * self.expansion
        self.preact = _preactivation(in_channels, preact)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False), *_bn_relu(channels), QuantPoint(),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False), *_bn_relu(channels), QuantPoint(),
            nn.Conv2d(channels, out, 1, bias=False), nn.BatchNorm2d(out),
        )
        self.shortcut = _shortcut(in_channels, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.preact(x)) + self.shortcut(x)


class PreActResNet(StageBackbone):
    """Stem → groups (each ends with BN-ReLU-Quant, the last without Quant) → stage features.

    ``stem="imagenet"``: 7x7/2 conv-BN-ReLU and 3x3/2 max-pool; ``stem="cifar"``: 3x3 conv-BN-ReLU.
    """

    def __init__(self, block: type[nn.Module], blocks: tuple[int, ...], widths: tuple[int, ...], stem: str = "imagenet") -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), *_bn_relu(widths[0]), nn.MaxPool2d(3, 2, 1))
            stem_stride = 4
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), *_bn_relu(widths[0]))
            stem_stride = 1
        groups, in_channels = [], widths[0]
        for i, (n, ch) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers: list[nn.Module] = []
            for j in range(n):
                preact = "bnrelu" if j > 0 else ("quant" if stride == 1 else "none")
                layers.append(block(in_channels, ch, stride if j == 0 else 1, preact))
                in_channels = ch * block.expansion
            layers += _bn_relu(in_channels)
            if i < len(blocks) - 1:
                layers.append(QuantPoint())
            groups.append(nn.Sequential(*layers))
        self.layers = nn.ModuleList(groups)
        self.out_channels = [w * block.expansion for w in widths]
        self.output_stride = stem_stride * 2 ** (len(widths) - 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


_IMAGENET_WIDTHS = (64, 128, 256, 512)


@register_backbone("preact_resnet18")
def preact_resnet18() -> nn.Module:
    return PreActResNet(PreActBasicBlock, (2, 2, 2, 2), _IMAGENET_WIDTHS)


@register_backbone("preact_resnet34")
def preact_resnet34() -> nn.Module:
    return PreActResNet(PreActBasicBlock, (3, 4, 6, 3), _IMAGENET_WIDTHS)


@register_backbone("preact_resnet50")
def preact_resnet50() -> nn.Module:
    return PreActResNet(PreActBottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS)


@register_backbone("preact_resnet20")
def preact_resnet20(*, width: int = 16) -> nn.Module:
    """3-stage CIFAR-style variant (3 basic blocks per stage) for quick CPU runs."""
    return PreActResNet(PreActBasicBlock, (3, 3, 3), (width, 2 * width, 4 * width), stem="cifar")


@register_backbone("preact_resnet8")
def preact_resnet8(*, width: int = 16) -> nn.Module:
    """3-stage CIFAR-style variant with one block per stage, for tests."""
    return PreActResNet(PreActBasicBlock, (1, 1, 1), (width, 2 * width, 4 * width), stem="cifar")
