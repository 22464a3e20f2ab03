"""Built-in backbones: torchvision ResNets and MobileNetV2, and CIFAR-style ResNets.

Each returns its stage features (see :mod:`rsvision.models`); the classifier head pools
the last one. torchvision's definitions are used as they are (He et al. 2016; Sandler et
al. 2018); their BatchNorms become switchable when the model is wrapped in an RSNet.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock

from rsvision.models.pretrained import Weights, load_exactly, torchvision_weights
from rsvision.nn.slimmable import keep_full_outputs
from rsvision.registry import register_backbone


class StageBackbone(nn.Module):
    """``stem`` then ``layers``, returning the output of every stage (the backbone contract)."""

    stem: nn.Module
    layers: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class TorchvisionResNet(StageBackbone):
    """A torchvision ResNet without its pooling and fc, returning the outputs of layer1..layer4."""

    output_stride = 32
    #: The classifier's key in torchvision's full model (loaded into the classifier head when it fits).
    classifier_key = "fc"

    def __init__(self, arch: str, **kwargs) -> None:
        super().__init__()
        self.arch = arch
        net = getattr(tvm, arch)(weights=None, **kwargs)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.out_channels = [_last_channels(layer) for layer in self.layers]

    def load_pretrained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision ResNet state dict (its fc is dropped)."""
        rename = {"conv1": "stem.0", "bn1": "stem.1"} | {f"layer{i}": f"layers.{i - 1}" for i in range(1, 5)}
        mapped, file_keys = {}, {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head != "fc":
                mapped[f"{rename.get(head, head)}.{rest}"] = value
                file_keys[f"{rename.get(head, head)}.{rest}"] = key
        load_exactly(self, mapped, file_keys)

    def library_weights(self, tag: str | None) -> Weights:
        """torchvision's weights ``tag`` of this ResNet (None: the default)."""
        return torchvision_weights(self.arch, tag, self.classifier_key)


def _last_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels


class TorchvisionMobileNetV2(nn.Module):
    """torchvision's MobileNetV2 features, split after the stride-4, 8, 16 and 32 blocks.

    ``full_last_conv``: once width-switchable, the last 1x1 convolution keeps its 1280
    outputs at every width (Sandler et al. 2018 apply width multipliers below 1 to every
    layer but the last convolution; MutualNet's official model: ``us=[True, False]``); false slims it too.
    """

    output_stride = 32
    _stage_ends = (4, 7, 14, 19)
    classifier_key = "classifier.1"

    def __init__(self, width_mult: float = 1.0, full_last_conv: bool = True) -> None:
        super().__init__()
        net = tvm.mobilenet_v2(weights=None, width_mult=width_mult)
        if full_last_conv:
            keep_full_outputs(net.features[-1][0])
        starts = (0,) + self._stage_ends[:-1]
        self.stages = nn.ModuleList([net.features[a:b] for a, b in zip(starts, self._stage_ends)])
        self.out_channels = [_conv_out(stage) for stage in self.stages]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def load_pretrained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision MobileNetV2 state dict (its classifier is dropped).

        ``features.n`` becomes ``stages.s.n``: slicing an ``nn.Sequential`` keeps the
        original indices as module names.
        """
        mapped, file_keys = {}, {}
        for key, value in state.items():
            parts = key.split(".")
            if parts[0] != "features" or len(parts) < 3 or not parts[1].isdigit():
                continue
            stage = next((i for i, end in enumerate(self._stage_ends) if int(parts[1]) < end), len(self._stage_ends))
            mapped[".".join(["stages", str(stage), *parts[1:]])] = value
            file_keys[".".join(["stages", str(stage), *parts[1:]])] = key
        load_exactly(self, mapped, file_keys)

    def library_weights(self, tag: str | None) -> Weights:
        """torchvision's weights ``tag`` of MobileNetV2 (None: the default); they fit width 1 only."""
        return torchvision_weights("mobilenet_v2", tag, self.classifier_key)


def _conv_out(module: nn.Module) -> int:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class CifarResNet(StageBackbone):
    """ResNet for small images (He et al. 2016, §4.2): 3x3 stem, no max-pool.

    ``widths`` gives the channels of each stage (first stage at the stem's stride, then 2
    each). ``stem_stride`` 2 strides the stem convolution; 4 adds a 3x3 max-pool, as in
    the ImageNet ResNets, for cheap runs on larger images. ``init``: ``torch`` keeps
    PyTorch's default initialisation of the convolutions; ``he`` draws them as He et al.
    (2015) and torchvision's ResNets do (normal, fan-out, gain for ReLU).
    """

    def __init__(self, blocks: tuple[int, ...], widths: tuple[int, ...], stem_stride: int = 1, init: str = "torch") -> None:
        super().__init__()
        if stem_stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, got {stem_stride}")
        if init not in ("torch", "he"):
            raise ValueError(f"init must be 'torch' or 'he', got {init!r}")
        stem = [nn.Conv2d(3, widths[0], 3, stride=min(stem_stride, 2), padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        if stem_stride == 4:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        stages, in_ch = [], widths[0]
        for i, (n, ch) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or in_ch != ch:
                down = nn.Sequential(nn.Conv2d(in_ch, ch, 1, stride, bias=False), nn.BatchNorm2d(ch))
            layers = [BasicBlock(in_ch, ch, stride, down)] + [BasicBlock(ch, ch) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = ch
        self.layers = nn.ModuleList(stages)
        self.out_channels = list(widths)
        self.output_stride = stem_stride * 2 ** (len(widths) - 1)
        if init == "he":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@register_backbone("resnet18")
def resnet18(*, zero_init_residual: bool = False) -> nn.Module:
    return TorchvisionResNet("resnet18", zero_init_residual=zero_init_residual)


@register_backbone("resnet34")
def resnet34(*, zero_init_residual: bool = False) -> nn.Module:
    return TorchvisionResNet("resnet34", zero_init_residual=zero_init_residual)


@register_backbone("resnet50")
def resnet50(*, zero_init_residual: bool = False) -> nn.Module:
    return TorchvisionResNet("resnet50", zero_init_residual=zero_init_residual)


@register_backbone("resnet101")
def resnet101(*, zero_init_residual: bool = False) -> nn.Module:
    return TorchvisionResNet("resnet101", zero_init_residual=zero_init_residual)


@register_backbone("mobilenet_v2")
def mobilenet_v2(*, width_mult: float = 1.0, full_last_conv: bool = True) -> nn.Module:
    return TorchvisionMobileNetV2(width_mult, full_last_conv)


@register_backbone("resnet20")
def resnet20(*, width: int = 16, stem_stride: int = 1, init: str = "torch") -> nn.Module:
    """The 3-stage CIFAR ResNet-20 (0.27M parameters at width 16)."""
    return CifarResNet((3, 3, 3), (width, 2 * width, 4 * width), stem_stride, init)


@register_backbone("resnet14")
def resnet14(*, width: int = 16, stem_stride: int = 1, init: str = "torch") -> nn.Module:
    """The 3-stage CIFAR ResNet with two blocks per stage (0.17M parameters at width 16)."""
    return CifarResNet((2, 2, 2), (width, 2 * width, 4 * width), stem_stride, init)


@register_backbone("resnet8")
def resnet8(*, width: int = 16, stem_stride: int = 1, init: str = "torch") -> nn.Module:
    """A 3-stage CIFAR ResNet with one block per stage, for quick CPU runs and tests."""
    return CifarResNet((1, 1, 1), (width, 2 * width, 4 * width), stem_stride, init)


@register_backbone("resnet18_cifar")
def resnet18_cifar(*, width: int = 64, stem_stride: int = 1, init: str = "torch") -> nn.Module:
    """ResNet-18's four stages with a CIFAR stem (3x3 conv, no max-pool)."""
    return CifarResNet((2, 2, 2, 2), (width, 2 * width, 4 * width, 8 * width), stem_stride, init)
