"""Detectors with a switchable backbone (MutualNet §4.3): torchvision's Faster R-CNN and Mask
R-CNN with FPN on any registered backbone (the built-in ResNets, ``timm/<name>``, a user's).

A sub-network is a shorter-side size: torchvision's own transform resizes every image so its
shorter side is the sub-network's resolution (the longer side capped at ``max_size``), and
every BatchNorm of the backbone keeps a private group per size. The FPN neck, the RPN and the
box (and mask) heads hold one parameter set, shared by all sizes. The sub-network is always
the one pinned with :func:`~rsvision.nn.switchable.at_subnet`, never guessed from the padded
batch, whose size says nothing about it.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, Sequence

import torch
import torchvision
import torchvision.models.detection as tvd
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops.feature_pyramid_network import (
    FeaturePyramidNetwork,
    LastLevelMaxPool,
)

from rsvision.errors import UserError
from rsvision.models.factory import build_backbone
from rsvision.nn.slimmable import keep_full_outputs, make_slimmable
from rsvision.nn.switchable import RSNet, Switchable, at_subnet
from rsvision.subnet import SubNet, SubNetLike, subnets_of

#: ``model.head`` of a detection recipe → torchvision's detector class name.
DETECTORS = {"fasterrcnn": "FasterRCNN", "maskrcnn": "MaskRCNN", "retinanet": "RetinaNet"}
#: Longer-side cap over shorter side (the paper's 1000 x 600).
MAX_SIZE_RATIO = 1000 / 600


class FPNBackbone(nn.Module):
    """A backbone's stage features through torchvision's FPN (plus a max-pooled level):
    what torchvision's detectors take as ``backbone``."""

    def __init__(self, body: nn.Module, fpn_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.out_channels), fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def resized_size(height: Any, width: Any, min_size: int, max_size: int) -> tuple[Any, Any]:
    """The size an ``height x width`` image is resized to: ``floor(side x s)`` per side with
    ``s = min(min_size / shorter, max_size / longer)``, torchvision's rule, in exact integer
    arithmetic (``side x p // q`` for ``s = p / q``).

    The sides are Python ints in PyTorch and int64 tensors while the ONNX exporter traces,
    and both give the same integers: the shorter side is ``min_size`` exactly (the longer
    ``max_size`` when capped). torchvision's own rule computes ``s`` in floating point, float64
    in PyTorch but float32 in the exported graph, whose product then falls just under an integer:
    a 1080 x 1920 photo at 48 became 47 x 85 in the graph and 48 x 85 in PyTorch.
    """
    if isinstance(height, torch.Tensor):
        shorter, longer = torch.minimum(height, width), torch.maximum(height, width)
        capped = longer * min_size > shorter * max_size
        p = torch.where(capped, torch.full_like(shorter, max_size), torch.full_like(shorter, min_size))
        q = torch.where(capped, longer, shorter)
        return height * p // q, width * p // q
    shorter, longer = min(height, width), max(height, width)
    p, q = (max_size, longer) if longer * min_size > shorter * max_size else (min_size, shorter)
    return height * p // q, width * p // q


class ShorterSideTransform(GeneralizedRCNNTransform):
    """torchvision's resize, normalise and batch step with the size of :func:`resized_size`, so
    that PyTorch and the exported graph resize every image to the same size."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        if self.fixed_size is not None or (self.training and self._skip_resize):
            return super().resize(image, target)
        if torchvision._is_tracing():
            height, width = torch.onnx.operators.shape_as_tensor(image)[-2:].unbind()
        else:
            height, width = image.shape[-2:]
        side = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        size = resized_size(height, width, side, int(self.max_size))
        resized = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if target is None:
            return resized, target
        target = {**target, "boxes": resize_boxes(target["boxes"], image.shape[-2:], resized.shape[-2:])}
        if "masks" in target:
            target["masks"] = torch.nn.functional.interpolate(target["masks"][:, None].float(), size=size)[:, 0].byte()
        return resized, target


class SubNetTransform(ShorterSideTransform, Switchable):
    """The resize, normalise and batch step at the active sub-network's size:
    shorter side = its resolution, longer side at most ``max_size`` (:func:`resized_size`)."""

    def forward(self, images, targets=None):
        if self.subnet is None:
            raise RuntimeError("the detector's transform has no sub-network: run it under at_subnet(model, size)")
        self.min_size = (self.subnet.resolution,)
        return super().forward(images, targets)

    def materialize(self, subnet: SubNet, channels: int | None = None) -> ShorterSideTransform:
        """The plain transform at ``subnet``'s size (for export)."""
        return ShorterSideTransform(subnet.resolution, self.max_size, self.image_mean, self.image_std, self.size_divisible, self.fixed_size)


class SwitchableDetector(RSNet):
    """An :class:`RSNet` whose body is a torchvision detector: ``forward(images, targets=None)``
    takes a list of ``[C, H, W]`` images (any sizes) and runs as the pinned sub-network."""

    def forward(self, images: Sequence[torch.Tensor], targets: Sequence[dict] | None = None):
        if self.pinned is None:
            raise ValueError(
                "a detector runs as the sub-network pinned with at_subnet(model, size); its BN group "
                "cannot be read from a padded batch"
            )
        with at_subnet(self.body, self.pinned):
            return self.body(list(images), None if targets is None else list(targets))


def _detector_kwargs(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    taken = {"self", "backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std", "rpn_anchor_generator", "anchor_generator", "head"}
    allowed = {p for p in inspect.signature(cls.__init__).parameters if p not in taken and not p.endswith(("_head", "_predictor"))}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise UserError(f"model.head_args: {cls.__name__} does not take {', '.join(unknown)} (it takes e.g. rpn_batch_size_per_image, box_batch_size_per_image, box_detections_per_img)")
    return given


def create_detector(
    *,
    backbone: str,
    head: str = "fasterrcnn",
    num_classes: int,
    subnets: Sequence[SubNetLike],
    in_channels: int = 3,
    mean: Sequence[float] = (0.0,) * 3,
    std: Sequence[float] = (1.0,) * 3,
    max_size: int | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    box_representation: int = 1024,
    mask_channels: int = 256,
    pretrained: str | None = None,
    backbone_args: dict[str, Any] | None = None,
    head_args: dict[str, Any] | None = None,
    widths: Sequence[float] | None = None,
    width_divisor: int = 8,
    shared_bn: bool = False,
) -> SwitchableDetector:
    """A switchable detector: ``head`` (``fasterrcnn``, ``maskrcnn`` or ``retinanet``) on the
    registered ``backbone`` with an FPN; ``num_classes`` object classes (label 0 is torchvision's background).

    ``anchor_sizes`` gives one anchor size per pyramid level (the backbone's stages plus the
    pooled level; three aspect ratios each, and for RetinaNet three scales 2^0, 2^(1/3), 2^(2/3)). ``max_size`` caps the longer side (default: 1000/600
    of the largest size, the paper's ratio). ``box_representation`` is the width of the box
    head's two fully connected layers, ``mask_channels`` that of the mask head's four
    convolutions (torchvision's 1024 and 256). ``head_args`` go to torchvision's detector.

    ``widths`` (a range's ends or a list) makes the backbone width-switchable
    (:func:`~rsvision.nn.slimmable.make_slimmable`, channels rounded to ``width_divisor``):
    the FPN's convolutions take the first channels of each stage and keep all their outputs,
    so the RPN and the heads see the same channels at every width. ``shared_bn``: one BN
    group in training (post-hoc BN statistics, MutualNet).
    """
    if head not in DETECTORS:
        raise UserError(f"model.head: '{head}' is not a detector; choose one of {', '.join(DETECTORS)}")
    subnets = subnets_of(subnets)
    body = build_backbone(backbone, backbone_args, pretrained, in_channels)
    levels = len(body.out_channels) + 1
    if len(anchor_sizes) != levels:
        raise UserError(f"model.head_args.anchor_sizes: expected {levels} sizes (the {levels - 1} stages of '{backbone}' plus the pooled level), got {list(anchor_sizes)}")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != in_channels:
            raise UserError(f"data.{name}: expected {in_channels} values (model.in_channels), got {list(values)}")
    largest = max(s.resolution for s in subnets)
    cls = getattr(tvd, DETECTORS[head])
    classes = num_classes + 1
    extra = _detector_kwargs(cls, dict(head_args or {}))
    neck = FPNBackbone(body, fpn_channels)
    if widths:
        for layer in neck.fpn.modules():
            if isinstance(layer, nn.Conv2d):
                keep_full_outputs(layer)
        smallest = min(s.resolution for s in subnets)
        example = torch.zeros(2, in_channels, smallest, smallest)
        try:
            make_slimmable(neck, (min(widths), max(widths)), width_divisor, example_input=example)
        except UserError as exc:
            raise UserError(f"widths: {backbone} cannot be made width-switchable: {exc}") from None
    if head == "retinanet":
        scales = tuple(tuple(round(a * 2 ** (k / 3)) for k in range(3)) for a in anchor_sizes)
        anchors = AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * levels)
        retina_head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], classes)
        detector = cls(neck, classes, anchor_generator=anchors, head=retina_head, **extra)
    else:
        anchors = AnchorGenerator(tuple((int(a),) for a in anchor_sizes), ((0.5, 1.0, 2.0),) * levels)
        heads = {
            "box_head": TwoMLPHead(fpn_channels * 7 * 7, box_representation),
            "box_predictor": FastRCNNPredictor(box_representation, classes),
        }
        if head == "maskrcnn":
            heads["mask_head"] = MaskRCNNHeads(fpn_channels, (mask_channels,) * 4, 1)
            heads["mask_predictor"] = MaskRCNNPredictor(mask_channels, mask_channels, classes)
        detector = cls(neck, rpn_anchor_generator=anchors, **heads, **extra)
    detector.transform = SubNetTransform(largest, max_size or round(largest * MAX_SIZE_RATIO), list(mean), list(std))
    return SwitchableDetector(detector, subnets, shared_bn=shared_bn)
