"""Quantized layers and the model-conversion pass shared by every quantizer.

A quantizer is two factories: one building a weight quantizer for a layer (a module
mapping the float weight to its quantized value, gradients straight through) and one
building an activation quantizer (a module mapping a tensor to its quantized value).
:func:`quantize_layers` swaps ``nn.Conv2d`` / ``nn.Linear`` for :class:`QuantConv2d` /
:class:`QuantLinear` carrying those modules, so the float weights stay the trained
parameters (and the state-dict keys of a float model are kept).

Activation quantizers go where the model says: a backbone declares its quantization
points with :class:`QuantPoint` placeholders (the pre-activation ResNet does, following
LQ-Nets). A model without any gets one on the input of every quantized layer except the
model's first layer (whose input is the image); in ReLU networks such as ResNets that is
the output of each ReLU feeding a conv, which is where LQ-Nets quantizes. Each one is
built signed or unsigned after the autograd graph of an example input
(:mod:`rsvision.quant.sign`): unsigned where its input is provably non-negative (after a
ReLU), signed elsewhere (MobileNetV2's linear bottlenecks, RefineNet's fusion sums).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rsvision.nn.surgery import set_submodule
from rsvision.quant.sign import inputs_can_be_negative

WeightQuantizerFactory = Callable[[nn.Module], nn.Module]
ActQuantizerFactory = Callable[[bool], nn.Module]  # argument: whether the input can be negative


class QuantPoint(nn.Identity):
    """Marks where a backbone wants its activations quantized; identity until converted."""


class _QuantizedLayer:
    """What the quantized layers share: the float weight stays the parameter; quantizers wrap it."""

    weight_quantizer: nn.Module
    input_quantizer: nn.Module

    def _attach(self, layer: nn.Module, weight_quantizer: nn.Module, input_quantizer: nn.Module | None):
        self.weight, self.bias = layer.weight, layer.bias
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer if input_quantizer is not None else nn.Identity()
        return self

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)


class QuantConv2d(_QuantizedLayer, nn.Conv2d):
    """``conv(input_quantizer(x), weight_quantizer(weight))``; the float weight is the parameter."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None) -> "QuantConv2d":
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        return q._attach(conv, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)


class QuantLinear(_QuantizedLayer, nn.Linear):
    """``linear(input_quantizer(x), weight_quantizer(weight))``."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer: nn.Module, input_quantizer: nn.Module | None = None) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)
        return q._attach(linear, weight_quantizer, input_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)


def quantize_layers(
    model: nn.Module,
    weight_quantizer: WeightQuantizerFactory,
    act_quantizer: ActQuantizerFactory | None = None,
    *,
    quantize_first: bool = False,
    quantize_last: bool = False,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """Swap the model's convs and linears for quantized ones (in place; returns ``model``).

    The first and the last layer (in module order: the stem conv and the classifier of a
    classification network) stay in float unless ``quantize_first`` / ``quantize_last``.
    With ``act_quantizer``, every :class:`QuantPoint` becomes one; a model without quant
    points gets one on the input of each quantized layer but the model's first layer.
    ``act_quantizer(signed)`` is told whether that input can be negative, which one
    forward pass of ``example_input`` (an input the model accepts, such as
    ``torch.zeros(1, 3, 32, 32)``) decides; it is required with ``act_quantizer``.
    """
    if act_quantizer is not None and example_input is None:
        raise ValueError(
            "quantize_layers: activation quantization needs example_input (a tensor the model accepts, "
            "e.g. torch.zeros(1, 3, 32, 32)) to find which layer inputs can be negative"
        )
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QUANT_LAYERS)]
    if not layers:
        return model
    points = [n for n, m in model.named_modules() if isinstance(m, QuantPoint)]
    first, last = layers[0][0], layers[-1][0]
    chosen = [(n, m) for n, m in layers if (n != first or quantize_first) and (n != last or quantize_last)]
    signed: dict[str, bool] = {}
    if act_quantizer is not None:
        sites = points or [n for n, _ in chosen if n != first]
        signed = inputs_can_be_negative(model, sites, example_input) if sites else {}
    for name, layer in chosen:
        act = act_quantizer(signed[name]) if name in signed else None
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        set_submodule(model, name, cls.from_float(layer, weight_quantizer(layer), act))
    if act_quantizer is not None:
        for name in points:
            set_submodule(model, name, act_quantizer(signed[name]))
    return model
