"""``create_model``: a switchable network from registered parts, with or without a recipe.

Backbone contract: ``forward(x)`` returns the list of stage features (shallowest first,
deepest last; strides 4, 8, 16, 32 for the built-in ResNets); attributes ``out_channels``
(channels per returned stage) and ``output_stride`` (the deepest stage's stride). A head
takes that list. Both get their BatchNorms made switchable.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Sequence

import torch
from torch import nn

from rsvision.errors import UserError
from rsvision.models.pretrained import Weights, load_backbone_weights, load_classifier, resolve_weights
from rsvision.nn.slimmable import make_slimmable
from rsvision.nn.switchable import RSNet
from rsvision.recipe import Recipe
from rsvision.registry import BACKBONES, HEADS, QUANTIZERS
from rsvision.subnet import SubNet, SubNetLike, subnets_of


class EncoderDecoder(nn.Module):
    """``head(backbone(x))``: the body that :class:`RSNet` makes switchable."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        return self.head(self.backbone(x))


def check_backbone(backbone: nn.Module, name: str) -> None:
    """The backbone contract, checked when a model is built (one line naming what is missing)."""
    channels = getattr(backbone, "out_channels", None)
    stride = getattr(backbone, "output_stride", None)
    problems = []
    if not (isinstance(channels, (list, tuple)) and channels and all(isinstance(c, int) and c > 0 for c in channels)):
        problems.append(f"out_channels (a list of the channels of each returned stage) is {channels!r}")
    if not (isinstance(stride, int) and stride > 0):
        problems.append(f"output_stride (the deepest stage's stride, an int) is {stride!r}")
    if problems:
        raise UserError(f"model.backbone: backbone '{name}' breaks the backbone contract: {'; '.join(problems)}")


def adapt_input_channels(backbone: nn.Module, channels: int) -> None:
    """Make the first convolution take ``channels`` input channels (e.g. 1 for grey images).

    The new kernel for channel c is the mean of the old kernels times 3 / channels, so a
    pretrained network sees a grey image as it saw the same image in colour.
    """
    first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise UserError("model.in_channels: the backbone has no convolution to adapt")
    if first.in_channels == channels:
        return
    if first.groups != 1:
        raise UserError(f"model.in_channels: the first convolution is grouped ({first.groups} groups); cannot adapt it")
    with torch.no_grad():
        weight = first.weight.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1) * (first.in_channels / channels)
    first.in_channels = channels
    first.weight = nn.Parameter(weight)


def build_backbone(name: str, backbone_args: dict[str, Any] | None = None, pretrained: bool | str | None = None, in_channels: int = 3) -> nn.Module:
    """The registered backbone ``name``, checked against the backbone contract, with its
    pretrained weights loaded and its first convolution taking ``in_channels``."""
    return _backbone_and_weights(name, backbone_args, pretrained, in_channels)[0]


def _backbone_and_weights(
    name: str, backbone_args: dict[str, Any] | None, pretrained: bool | str | None, in_channels: int
) -> tuple[nn.Module, Weights | None]:
    """:func:`build_backbone`, and the weights loaded into it (their classifier may fit the head).

    What was loaded stays on the backbone as ``pretrained_record`` (read by
    :func:`rsvision.models.pretrained.loaded_weights` for the run's metadata).
    """
    net = BACKBONES.build(name, field="model.backbone_args", **(backbone_args or {}))
    check_backbone(net, name)
    weights = resolve_weights(net, pretrained, name)
    if weights is not None:
        load_backbone_weights(net, weights, name)
        net.pretrained_record = {"weights": weights.source}
    if in_channels != 3:
        adapt_input_channels(net, in_channels)
    return net, weights


def _positive_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def check_arguments(resolutions: Sequence[int], subnets: Sequence[SubNetLike] | None, num_classes: int, in_channels: int) -> None:
    """The sizes and counts :func:`create_model` is given, as one-line errors naming the argument."""
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not _positive_int(value):
            raise UserError(f"{name}: expected a positive integer, got {value!r}")
    if subnets:
        try:
            subnets_of(subnets)
        except (TypeError, ValueError):
            raise UserError(f"subnets: expected sizes (224) or sub-network ids (160w70), got {list(subnets)!r}") from None
    elif isinstance(resolutions, (int, str)) or not resolutions or not all(map(_positive_int, resolutions)):
        raise UserError(f"resolutions: expected a list of one or more positive integer sizes, got {resolutions!r}")


def create_model(
    *,
    backbone: str,
    head: str = "classifier",
    num_classes: int = 1000,
    resolutions: Sequence[int] = (224,),
    subnets: Sequence[SubNetLike] | None = None,
    in_channels: int = 3,
    pretrained: bool | str | None = None,
    shared_bn: bool = False,
    backbone_args: dict[str, Any] | None = None,
    head_args: dict[str, Any] | None = None,
    quant: dict[str, Any] | None = None,
    widths: Sequence[float] | None = None,
    width_divisor: int = 8,
) -> RSNet:
    """A switchable network: a registered backbone and head, a private BN per sub-network.

    ``subnets`` defaults to ``resolutions`` (an RS-Net), or with ``widths`` to every
    (width, resolution). ``quant`` is a quantizer recipe, e.g. ``{"method": "lq",
    "weight_bits": 2, "act_bits": 2}``. ``pretrained``: ``true``, a tag or a file
    (:mod:`rsvision.models.pretrained`); a linear classifier head takes the weights'
    classifier when its shape fits. ``widths`` (e.g. ``[1.0, 0.25]``, a range's ends,
    or a list) makes the network width-switchable over ``[min(widths), max(widths)]``
    (:func:`rsvision.nn.slimmable.make_slimmable`, channels rounded to ``width_divisor``).
    """
    check_arguments(resolutions, subnets, num_classes, in_channels)
    net, weights = _backbone_and_weights(backbone, backbone_args, pretrained, in_channels)
    head_module = HEADS.build(head, field="model.head_args", backbone=net, num_classes=num_classes, **(head_args or {}))
    if weights is not None:
        net.pretrained_record["classifier"] = load_classifier(head_module, weights)
    body = EncoderDecoder(net, head_module)
    if widths:
        if quant is not None:
            raise UserError("quant: quantized width-switchable networks are not supported")

        smallest = min(SubNet.parse(s).resolution for s in subnets) if subnets else min(resolutions)
        example = torch.zeros(2, in_channels, smallest, smallest)
        try:
            make_slimmable(body, (min(widths), max(widths)), width_divisor, example_input=example)
        except UserError as exc:
            raise UserError(f"widths: {backbone} with head {head} cannot be made width-switchable: {exc}") from None
        subnets = subnets or [SubNet(r, w) for w in widths for r in resolutions]
    subnets = subnets_of(subnets or resolutions)
    if quant is not None:
        # The quantizer reads the graph (where inputs can be negative) from one forward pass.
        smallest = min(s.resolution for s in subnets)
        quant = dict(quant)
        example = torch.zeros(1, in_channels, smallest, smallest)
        body = QUANTIZERS.build(quant.pop("method"), field="quant", model=body, example_input=example, **quant)
    return RSNet(body, subnets, shared_bn=shared_bn)


def build_model(recipe: Recipe) -> RSNet:
    """The switchable network a recipe describes (a thin adapter over :func:`create_model`)."""
    m = recipe.model
    if m.num_classes is None:
        raise UserError(f"{recipe.source}: model.num_classes is not set; the task takes it from the data (Task.build_model), or set it")
    return create_model(
        backbone=m.backbone,
        head=m.head,
        num_classes=m.num_classes,
        resolutions=recipe.resolutions,
        subnets=recipe.subnets,
        in_channels=m.in_channels,
        pretrained=m.pretrained,
        shared_bn=m.shared_bn if recipe.widths is None else recipe.widths.bn == "posthoc",
        backbone_args=m.backbone_args,
        head_args=m.head_args,
        quant=recipe.quant.model_dump() if recipe.quant is not None else None,
        widths=recipe.widths.trained if recipe.widths is not None else None,
        width_divisor=recipe.widths.divisor if recipe.widths is not None else 8,
    )
