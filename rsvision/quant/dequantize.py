"""Quantized layers as plain float layers: what an ONNX export of a quantized network runs.

:func:`dequantize` replaces, in place and for evaluation:

- every :class:`~rsvision.quant.modules.QuantConv2d` / ``QuantLinear`` by an ``nn.Conv2d`` /
  ``nn.Linear`` whose weight is the quantized weight as float values (the K-bit levels the
  layer computes with), preceded by its input quantizer;
- every activation quantizer that has fixed levels (LQ-Nets', with a ``levels()`` method)
  by :class:`NearestLevel`: comparisons with the midpoints between sorted levels, the same
  rule and the same float32 thresholds the quantizer uses in evaluation, so its output is
  identical and exports as plain element-wise ops (Greater, Where).

Activation quantizers without ``levels()`` are left as they are; :func:`dequantize` lists them.

Checking an export of such a network: a value within float rounding of a threshold may
take the other level in another runtime (sums in another order), and one flipped level
moves the output far beyond float tolerance. :func:`compare_quantized` therefore compares
outputs only on the images whose every quantizer input is at least ``TIE_MARGIN x max(1,
|levels|)`` from a threshold in PyTorch; the others are counted as near ties.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from rsvision.nn.surgery import eval_mode, set_submodule
from rsvision.quant.modules import QUANT_LAYERS, QuantConv2d

#: How close (relative to the levels' scale, at least 1) a quantizer input may come to a threshold
#: before its rounding depends on the runtime: 16 float32 steps at 1. Folded and unfolded BN, or
#: onnxruntime and PyTorch, give quantizer inputs up to 4 steps apart (0.2-4.8e-7 on inputs of 1).
TIE_MARGIN = 2e-6


class NearestLevel(nn.Module):
    """Each value to the nearest of fixed ``levels`` (a value above a midpoint takes the upper level)."""

    #: BN folding traces it as one call (:mod:`rsvision.nn.fold`).
    fold_leaf = True

    def __init__(self, levels: torch.Tensor) -> None:
        super().__init__()
        ordered = levels.detach().flatten().float().sort().values
        self.register_buffer("levels", ordered.clone())
        self.register_buffer("thresholds", (ordered[1:] + ordered[:-1]) / 2)
        self.count = int(ordered.numel())

    def extra_repr(self) -> str:
        return f"levels={self.count}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.levels[0].to(x.dtype).expand_as(x)
        for i in range(self.count - 1):
            q = torch.where(x > self.thresholds[i], self.levels[i + 1].to(x.dtype), q)
        return q


def _is_act_quantizer(m: nn.Module) -> bool:
    return callable(getattr(m, "levels", None)) and isinstance(getattr(m, "basis", None), torch.Tensor) and getattr(m, "basis").dim() == 1


def _float_layer(layer: nn.Module) -> nn.Module:
    weight = layer.quantized_weight().detach()
    if isinstance(layer, QuantConv2d):
        plain = nn.Conv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
            layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode,
        )
    else:
        plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    plain = plain.to(device=weight.device, dtype=weight.dtype)
    plain.weight.data.copy_(weight)
    if layer.bias is not None:
        plain.bias.data.copy_(layer.bias.detach())
    return plain.eval()


@torch.no_grad()
def dequantize(model: nn.Module) -> dict[str, Any] | None:
    """Replace quantized layers and fixed-level activation quantizers (see the module docstring).

    Returns None for a model without quantized layers, else what was replaced: the count
    of weight-quantized layers and activation quantizers, their bits, and the activation
    quantizers left as they are (``left``, module names).
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS)]
    if not layers:
        return None
    with eval_mode(model):
        weight_bits = sorted({int(m.weight_quantizer.bits) for _, m in layers if hasattr(m.weight_quantizer, "bits")})
        acts, left, act_bits = 0, [], set()
        for name, layer in layers:
            quantizer = layer.input_quantizer
            plain = _float_layer(layer)
            if isinstance(quantizer, nn.Identity):
                set_submodule(model, name, plain)
            elif _is_act_quantizer(quantizer):
                set_submodule(model, name, nn.Sequential(NearestLevel(quantizer.levels()), plain))
                acts += 1
                act_bits.add(int(getattr(quantizer, "bits", 0)))
            else:
                set_submodule(model, name, nn.Sequential(quantizer, plain))
                left.append(name)
        for name, m in list(model.named_modules()):
            if name and _is_act_quantizer(m) and not isinstance(m, NearestLevel):
                set_submodule(model, name, NearestLevel(m.levels()))
                acts += 1
                act_bits.add(int(getattr(m, "bits", 0)))
    return {
        "weights": "quantized weights stored as their float values",
        "weight_quantized_layers": len(layers),
        "weight_bits": weight_bits,
        "activation_quantizers": acts,
        "activation_bits": sorted(b for b in act_bits if b),
        "activations": "nearest-level rounding as Greater/Where ops" if acts else "not quantized",
        "left": left,
    }


@torch.no_grad()
def near_ties(network: nn.Module, x: torch.Tensor, margin: float = TIE_MARGIN) -> torch.Tensor:
    """Per image of ``x``: does some :class:`NearestLevel` input of ``network`` lie within
    ``margin x max(1, |levels|)`` of a threshold?"""
    near = torch.zeros(len(x), dtype=torch.bool)

    def hook(module: NearestLevel, args) -> None:
        gap = (args[0].unsqueeze(-1) - module.thresholds).abs().amin(-1).flatten(1)
        near.logical_or_((gap <= margin * max(1.0, float(module.levels.abs().max()))).any(1).cpu())

    handles = [m.register_forward_pre_hook(hook) for m in network.modules() if isinstance(m, NearestLevel)]
    try:
        network(x)
    finally:
        for handle in handles:
            handle.remove()
    return near


@torch.no_grad()
def compare_quantized(network: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> dict[str, Any]:
    """``run(x)`` (another runtime's forward of the graph exported from ``network``) against ``network(x)``.

    Returns the largest absolute difference over the images without a near tie
    (:func:`near_ties`), the largest output there, and how many images were compared and
    left out; with every image a near tie, nothing is compared (difference 0).
    """
    ties = near_ties(network, x)
    kept = x[~ties]
    if not len(kept):
        return {"max_abs_diff": 0.0, "max_abs_output": 0.0, "compared": 0, "near_ties": len(x)}
    reference = network(kept).float()
    diff = (torch.as_tensor(run(kept)).float() - reference).abs().max()
    return {"max_abs_diff": float(diff), "max_abs_output": float(reference.abs().max()), "compared": len(kept), "near_ties": int(ties.sum())}
