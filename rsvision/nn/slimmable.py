"""Width-switchable ("slimmable") networks by conversion (MutualNet §3.1-3.2, after US-Nets).

A sub-network of width ``w`` keeps the first ``channels_at(w, C, divisor)`` channels of
every layer of ``C`` output channels: ``make_divisible(w·C, divisor)``, the official code's
rounding (nearest multiple of ``divisor``, at least ``divisor``, never below 90 % of w·C),
at most C (MutualNet's ``W_{0:w}``, the first ``w x 100%`` weights of each layer). Some
layers stay full: the first convolution takes every image channel, the model's last layer
(the classifier, or a segmentation head's classifier) keeps all its outputs, and so does
any layer a backbone marks with :func:`keep_full_outputs` (MobileNetV2's last 1x1
convolution, the official model's ``us=[True, False]``).

:func:`make_slimmable` replaces every ``nn.Conv2d`` and ``nn.Linear`` of a model (in place)
by :class:`SlimmableConv2d` / :class:`SlimmableLinear`, which keep the same parameters
(state-dict keys do not change) and read the width of ``self.subnet``. Input channels
follow the input (``x.shape[1]``), so a layer needs no knowledge of its neighbours;
depthwise convolutions run with as many groups as input channels. BatchNorms are left
to :class:`~rsvision.nn.switchable.SwitchableBatchNorm` (an RSNet makes them switchable),
which serves a narrower input with its first channels.

Slicing is only correct when every layer's inputs are the first channels of its full
input. :func:`make_slimmable` therefore runs the model once at full width, refusing
channel concatenations, splits, channel indexing and reshapes that mix channels with
other dimensions, grouped (not depthwise) convolutions and layers with channel-sized
parameters it cannot slice (LayerNorm, GroupNorm, ...), then once at the smallest width;
a model that fails gets one :class:`~rsvision.errors.UserError` naming the layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from rsvision.errors import UserError
from rsvision.nn.surgery import eval_mode, replace_modules
from rsvision.nn.switchable import BN_TYPES, Switchable, SwitchableBatchNorm, at_subnet
from rsvision.subnet import SubNet

__all__ = ["SlimmableConv2d", "SlimmableLinear", "channels_at", "keep_full_outputs", "make_divisible", "make_slimmable", "slimmable_layers"]


def make_divisible(v: float, divisor: int) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` (halves up), at least ``divisor``,
    one ``divisor`` more where that falls below 90 % of ``v`` (the official code's
    ``make_divisible``, after TF-slim's MobileNet, with ``min_value = divisor``)."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def channels_at(width: float, channels: int, divisor: int = 8) -> int:
    """Channels a layer of ``channels`` keeps at ``width``: ``make_divisible(width * channels, divisor)``, at most ``channels``."""
    return min(channels, make_divisible(round(width * channels, 6), divisor))


def keep_full_outputs(layer: nn.Module) -> nn.Module:
    """Mark a ``Conv2d`` or ``Linear`` to keep all its outputs at every width once slimmed (returns it)."""
    layer.full_outputs = True
    return layer


class _Slimmable(Switchable):
    """What slimmable layers share: the divisor, the width range and whether outputs stay full."""

    divisor: int = 8
    width_range: tuple[float, float] = (1.0, 1.0)
    full_outputs: bool = False

    def _slim(self, divisor: int, width_range: tuple[float, float], full_outputs: bool) -> None:
        self.divisor, self.width_range, self.full_outputs = divisor, tuple(width_range), full_outputs
        self.subnet = None

    def active_outputs(self, width: float | None, channels: int) -> int:
        """Output channels at ``width`` (all of them for the last layer or at full width)."""
        if self.full_outputs or width is None:
            return channels
        return channels_at(width, channels, self.divisor)

    def _slim_repr(self) -> str:
        low, high = self.width_range
        return f"widths={low:g}..{high:g}, divisor={self.divisor}" + (", full outputs" if self.full_outputs else "")

    @property
    def width(self) -> float | None:
        return None if self.subnet is None else self.subnet.width

    @staticmethod
    def _materialized_width(subnet: SubNet, full_inputs: int, channels: int | None) -> tuple[float | None, int]:
        """(width to slice at, input channels) of ``subnet``'s plain layer."""
        width = subnet.width if subnet.width is not None and subnet.width < 1.0 else None
        return width, full_inputs if channels is None or width is None else channels

    @staticmethod
    def _filled(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        """``layer`` holding ``weight`` and ``bias``, in evaluation mode."""
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
        return layer.eval()


class SlimmableConv2d(_Slimmable, nn.Conv2d):
    """``nn.Conv2d`` running on its first channels: ``weight[:c_out, :c_in]`` (``c_in`` from the input).

    A depthwise convolution (groups == in == out channels) keeps ``c_in`` channels and
    ``c_in`` groups.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, divisor: int, width_range: tuple[float, float], full_outputs: bool = False) -> "SlimmableConv2d":
        slim = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )
        slim.weight, slim.bias = conv.weight, conv.bias
        slim.train(conv.training)
        slim._slim(divisor, width_range, full_outputs)
        return slim

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def shape_at(self, width: float | None, in_channels: int) -> tuple[int, int, int]:
        """``(in, out, groups)`` at ``width`` for an input of ``in_channels``."""
        if self.depthwise:
            return in_channels, in_channels, in_channels
        return in_channels, self.active_outputs(width, self.out_channels), self.groups

    def sliced(self, width: float | None, in_channels: int) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        c_in, c_out, groups = self.shape_at(width, in_channels)
        weight = self.weight[:c_out] if self.depthwise else self.weight[:c_out, :c_in]
        return weight, None if self.bias is None else self.bias[:c_out], groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, groups = self.sliced(self.width, x.shape[1])
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, _pair(0), self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    @torch.no_grad()
    def materialize(self, subnet: SubNet, channels: int | None = None) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the sliced weights (``channels``: the input channels seen)."""
        width, c_in = self._materialized_width(subnet, self.in_channels, channels)
        weight, bias, groups = self.sliced(width, c_in)
        conv = nn.Conv2d(
            c_in, weight.shape[0], self.kernel_size, self.stride, self.padding, self.dilation, groups,
            bias is not None, self.padding_mode, device=weight.device, dtype=weight.dtype,
        )
        return self._filled(conv, weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._slim_repr()}"


class SlimmableLinear(_Slimmable, nn.Linear):
    """``nn.Linear`` running on its first features: ``weight[:out, :in]`` (``in`` from the input)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, divisor: int, width_range: tuple[float, float], full_outputs: bool = False) -> "SlimmableLinear":
        slim = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        slim.weight, slim.bias = linear.weight, linear.bias
        slim.train(linear.training)
        slim._slim(divisor, width_range, full_outputs)
        return slim

    def sliced(self, width: float | None, in_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.active_outputs(width, self.out_features)
        return self.weight[:out, :in_features], None if self.bias is None else self.bias[:out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.sliced(self.width, x.shape[-1])
        return F.linear(x, weight, bias)

    @torch.no_grad()
    def materialize(self, subnet: SubNet, channels: int | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` holding the sliced weights (``channels``: the input features seen)."""
        width, c_in = self._materialized_width(subnet, self.in_features, channels)
        weight, bias = self.sliced(width, c_in)
        return self._filled(nn.Linear(c_in, weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype), weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._slim_repr()}"


def slimmable_layers(model: nn.Module) -> list[_Slimmable]:
    return [m for m in model.modules() if isinstance(m, _Slimmable)]


# --------------------------------------------------------------------------- conversion


def make_slimmable(
    model: nn.Module,
    width_range: tuple[float, float],
    divisor: int = 8,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Make ``model`` executable at any width in ``width_range`` (in place; returns it).

    Every ``nn.Conv2d`` and ``nn.Linear`` becomes slimmable, sharing its parameters; the
    last one to run (the classifier) and those marked by :func:`keep_full_outputs` keep
    all their outputs. Call it before the BatchNorms
    are made switchable (``RSNet`` / ``create_model`` do that). ``example_input`` (default:
    zeros at 64 x 64) is run at full width and at the smallest width to check that slicing
    is valid for this structure (see the module docstring); a failure is a UserError naming
    the layer. The model failing at full width, before any slicing, is a crash of its own
    code: a RuntimeError naming the layer and the model's exception.
    """
    low, high = (float(w) for w in width_range)
    if not 0 < low <= high <= 1:
        raise UserError(f"width range: expected 0 < low <= high <= 1, got {list(width_range)}")
    if int(divisor) != divisor or divisor < 1:
        raise UserError(f"width divisor: expected a positive integer, got {divisor}")
    if any(isinstance(m, (SwitchableBatchNorm, _Slimmable)) for m in model.modules()):
        raise UserError("make_slimmable: convert the plain network, before its BatchNorms are made switchable (and only once)")
    names = {id(m): name or type(model).__name__ for name, m in model.named_modules()}
    for name, m in model.named_modules():
        _check_layer(m, name or type(model).__name__)
    example = example_input if example_input is not None else _zeros_for(model, 64)
    order = _full_width_pass(model, example, names)
    if not order:
        raise UserError(f"make_slimmable: {type(model).__name__} runs no convolution or linear layer")
    last = order[-1]
    replace_modules(model, lambda m, name: _convert(m, int(divisor), (low, high), name == last or getattr(m, "full_outputs", False)))
    _narrow_pass(model, example, SubNet(example.shape[-1], low), names)
    return model


def _check_layer(m: nn.Module, name: str) -> None:
    """Refuse layers whose channels slicing cannot follow (one line naming the layer)."""
    if isinstance(m, nn.Conv2d):
        if type(m) is not nn.Conv2d:
            raise UserError(f"{name}: a {type(m).__name__} (a Conv2d with a forward of its own); slimming converts plain nn.Conv2d only")
        depthwise = m.groups == m.in_channels == m.out_channels
        if m.groups > 1 and not depthwise:
            raise UserError(f"{name}: grouped convolution ({m.groups} groups of {m.in_channels // m.groups} channels); slicing channels would break its groups, only depthwise and plain convolutions can be slimmed")
        return
    if isinstance(m, nn.Linear):
        if not _plain_linear(m):
            raise UserError(f"{name}: a {type(m).__name__} (a Linear with a forward of its own); slimming converts plain nn.Linear only")
        return
    if isinstance(m, BN_TYPES):
        return
    if isinstance(m, (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase)):
        raise UserError(f"{name}: {type(m).__name__} layers cannot be slimmed (supported: Conv2d, Linear, BatchNorm)")
    own = [p for p in m.parameters(recurse=False) if p.numel() > 1]
    if own:
        raise UserError(f"{name}: {type(m).__name__} has channel-sized parameters that slimming cannot slice (supported: Conv2d, Linear, BatchNorm)")


@torch.no_grad()
def _plain_linear(m: nn.Linear) -> bool:
    """``nn.Linear`` itself, or a subclass computing exactly ``F.linear`` (timm's ``Linear``)."""
    if type(m) is nn.Linear:
        return True
    x = torch.randn(2, m.in_features, generator=torch.Generator().manual_seed(0)).to(m.weight)
    return torch.equal(m(x), F.linear(x, m.weight, m.bias))


def _convert(m: nn.Module, divisor: int, width_range: tuple[float, float], full: bool) -> nn.Module | None:
    if type(m) is nn.Conv2d:
        return SlimmableConv2d.from_conv(m, divisor, width_range, full_outputs=full)
    if isinstance(m, nn.Linear):
        return SlimmableLinear.from_linear(m, divisor, width_range, full_outputs=full)
    return None


def _zeros_for(model: nn.Module, resolution: int) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise UserError(f"make_slimmable: {type(model).__name__} has no convolution; pass example_input")
    return torch.zeros(2, first.in_channels, resolution, resolution, device=first.weight.device)


@contextmanager
def _module_stack(model: nn.Module, names: dict[int, str]) -> Iterator[list[str]]:
    """The names of the modules running right now, innermost last (for error messages)."""
    stack: list[str] = []

    def enter(m: nn.Module, args: Any) -> None:
        stack.append(names.get(id(m), type(m).__name__))

    def leave(m: nn.Module, args: Any, out: Any) -> None:
        stack.pop()

    handles = []
    for m in model.modules():
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


_CONCAT = {"cat", "concat", "concatenate"}
_SPLIT = {"split", "chunk", "tensor_split", "unbind", "narrow", "split_with_sizes"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten"}


def _channel_dim(dim: Any, ndim: int) -> bool:
    return isinstance(dim, int) and ndim >= 2 and dim % ndim == 1


class _ChannelWatch(TorchFunctionMode):
    """Flags tensor operations after which "the first channels" no longer means the same thing.

    With ``narrow_bn``, BatchNorm calls take the first channels of their tensors, so a
    model whose BatchNorms are still plain can be run at a smaller width.
    """

    def __init__(self, stack: list[str], narrow_bn: bool = False) -> None:
        super().__init__()
        self.stack, self.narrow_bn = stack, narrow_bn
        self.problem: str | None = None

    def _flag(self, what: str) -> None:
        if self.problem is None and self.stack:
            self.problem = f"{self.stack[-1]}: {what}; the first channels of its output are not the first channels of its inputs, so it cannot be slimmed"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.narrow_bn and func is F.batch_norm:
            return _narrow_batch_norm(*args, **kwargs)
        if name in _CONCAT:
            tensors = args[0] if args else kwargs.get("tensors", ())
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if len(tensors) > 1 and _channel_dim(dim, tensors[0].dim()):
                self._flag("it concatenates tensors along the channels")
        elif name in _SPLIT and args and isinstance(args[0], torch.Tensor):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            if name == "unbind":
                dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            elif name == "narrow":
                dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if _channel_dim(dim, args[0].dim()):
                self._flag("it splits its input along the channels")
        elif name == "__getitem__" and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
            index = args[1]
            if isinstance(index, tuple) and len(index) > 1 and _is_all(index[0]) and index[1] is not Ellipsis and not _is_all(index[1]):
                self._flag("it selects channels by index")
        out = func(*args, **kwargs)
        if name in _RESHAPE and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            x = args[0]
            if x.dim() >= 2 and out.dim() >= 2 and out.shape[:2] != x.shape[:2]:
                self._flag(f"it reshapes {tuple(x.shape)} to {tuple(out.shape)}, mixing the channels with other dimensions")
        return out


def _is_all(index: Any) -> bool:
    return isinstance(index, slice) and index == slice(None)


def _narrow_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    c = x.shape[1]
    cut = [None if t is None else t[:c] for t in (running_mean, running_var, weight, bias)]
    return F.batch_norm(x, *cut[:2], *cut[2:], training, momentum, eps)


@torch.no_grad()
def _full_width_pass(model: nn.Module, example: torch.Tensor, names: dict[int, str]) -> list[str]:
    """Run ``model`` once; return its conv/linear layers in the order they ran."""
    order: list[str] = []
    layers = {id(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(names[id(mod)])) for m in model.modules() if id(m) in layers]
    with eval_mode(model):
        try:
            with _module_stack(model, names) as stack, _ChannelWatch(stack) as watch:
                try:
                    model(example)
                except Exception as exc:
                    where = stack[-1] if stack else type(model).__name__
                    raise RuntimeError(f"make_slimmable: the model's own forward fails on a {tuple(example.shape)} example input at {where} ({type(exc).__name__}: {exc})") from exc
            if watch.problem:
                raise UserError(watch.problem)
        finally:
            for h in hooks:
                h.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def _narrow_pass(model: nn.Module, example: torch.Tensor, subnet: SubNet, names: dict[int, str]) -> None:
    """Run ``model`` at ``subnet``'s width (BatchNorms on their first channels)."""
    with eval_mode(model):
        with at_subnet(model, subnet), _module_stack(model, names) as stack, _ChannelWatch(stack, narrow_bn=True):
            try:
                model(example)
            except Exception as exc:
                where = stack[-1] if stack else type(model).__name__
                raise UserError(f"{where}: fails at width {subnet.width:g} ({type(exc).__name__}: {exc}); this structure cannot be slimmed") from None

