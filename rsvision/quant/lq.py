"""LQ-Nets learned quantizers (Zhang et al., ECCV 2018), as RS-Nets uses them (§4, Table 3).

A K-bit quantizer holds a basis ``v`` of K values; its 2^K levels are ``vᵀb`` for the
codes ``b`` (``{-1,+1}^K`` for weights, one basis per output channel; ``{0,1}^K`` for
activations, one basis per layer). Each value goes to the nearest level: thresholds are
the midpoints of the sorted levels, a value above a threshold goes to the upper level.

QEM (LQ-Nets Alg. 1): in training mode every forward refits the basis to the current
codes ``B`` of the values ``x`` by least squares, ``v* = (BᵀB + εI)⁻¹(Bᵀx + εv)`` with
LQ-Nets' ridge ε = 1e-4 for weights and none for activations (a batch whose codes leave
``BᵀB`` singular keeps the old basis), then moves the basis by ``v ← 0.9 v + 0.1 v*``.
This is the plain moving average; TensorFlow's ``assign_moving_average`` debiases it, which
only changes the first few updates. Quantized values are computed with the basis from
before the update. Gradients go straight through to the float weights; for activations
they pass below the top level and are zero above it (LQ-Nets' ``min(x, top)``).

Initial bases (LQ-Nets): weights ``v_j = 2^j · 0.6745 · sqrt(2/n) / 2^(K-1)`` with
``n = k·k·C_out`` (2 bits: ``0.6745·sqrt(2/n)·(1/2, 1)``); activations
``v_i = 2^i · 0.6745 · 2 / (2^K - 1)`` (2 bits: 0.4497, 0.8993).

The bases are buffers, so they are saved in the state dict and shared by every
resolution of an RS-Net (only BNs are private). Data parallelism: the weights are the
same on every process (DDP keeps them so), hence so are their codes and QEM updates; the
activation statistics ``BᵀB`` and ``Bᵀx`` of each batch are summed over processes with
``all_reduce`` when ``torch.distributed`` is initialised, so every process fits the
activation basis to the global batch and the bases stay identical.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from rsvision.quant.modules import quantize_layers
from rsvision.registry import register_quantizer

MOMENTUM = 0.9
EPS = 1e-4
NORM_PPF_0_75 = 0.6745


def code_table(bits: int, signed: bool) -> torch.Tensor:
    """The 2^K codes as rows ``[2^K, K]``: row i holds the bits of i (lowest first), as ±1 if signed."""
    index = torch.arange(2**bits)[:, None]
    b = ((index >> torch.arange(bits)) & 1).float()
    return 2 * b - 1 if signed else b


def nearest_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Code index (row of the code table) of the nearest level for each value.

    ``x`` is ``[G, n]`` and ``levels`` ``[G, 2^K]`` (one level set per group ``G``). A value
    strictly above the midpoint of two sorted levels takes the upper one.
    """
    sorted_levels, order = levels.sort(dim=1)
    thresholds = (sorted_levels[:, 1:] + sorted_levels[:, :-1]) / 2
    position = torch.searchsorted(thresholds.contiguous(), x.contiguous())
    return order.gather(1, position)


def normal_equations(x: torch.Tensor, index: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``BᵀB`` ``[G, K, K]`` and ``Bᵀx`` ``[G, K]`` (float64) from the code index of each value.

    Codes take 2^K values, so both are sums over levels of (count, sum of x) per level.
    """
    groups, levels = index.shape[0], table.shape[0]
    flat = (index + levels * torch.arange(groups, device=index.device)[:, None]).flatten()
    counts = torch.bincount(flat, minlength=groups * levels).view(groups, levels).double()
    sums = torch.zeros(groups * levels, dtype=torch.float64, device=x.device)
    sums = sums.index_add_(0, flat, x.flatten().double()).view(groups, levels)
    t = table.double()
    return torch.einsum("gl,lj,lk->gjk", counts, t, t), sums @ t


class LQWeightQuantizer(nn.Module):
    """K-bit weights with one learned basis per output channel (codes in {-1,+1}^K)."""

    def __init__(self, bits: int, out_channels: int, fan_out: int) -> None:
        super().__init__()
        self.bits = bits
        base = NORM_PPF_0_75 * (2.0 / fan_out) ** 0.5 / 2 ** (bits - 1)
        init = base * 2.0 ** torch.arange(bits, dtype=torch.float32)
        self.register_buffer("basis", init[:, None].repeat(1, out_channels))
        self.register_buffer("codes", code_table(bits, signed=True), persistent=False)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.basis.shape[1]}"

    def levels(self) -> torch.Tensor:
        """``[C_out, 2^K]``: level ``i`` of channel ``c`` is ``codes[i] · basis[:, c]``."""
        return (self.codes @ self.basis).t()

    def encode(self, weight: torch.Tensor) -> torch.Tensor:
        """Code index of every weight, shaped ``[C_out, n]``."""
        return nearest_levels(weight.detach().reshape(weight.shape[0], -1), self.levels())

    def decode(self, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The quantized weight of shape ``shape`` from its code indices."""
        return self.levels().gather(1, index).view(shape)

    @torch.no_grad()
    def qem_update(self, weight: torch.Tensor, index: torch.Tensor) -> None:
        """One QEM step: ridge least squares of the weights on their codes, then the moving average."""
        btb, btw = normal_equations(weight.reshape(weight.shape[0], -1), index, self.codes)
        eye = torch.eye(self.bits, dtype=btb.dtype, device=btb.device)
        new = torch.linalg.solve(btb + EPS * eye, btw + EPS * self.basis.t().double())
        self.basis.mul_(MOMENTUM).add_((1 - MOMENTUM) * new.t().to(self.basis.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            index = self.encode(weight)
            q = self.decode(index, weight.shape).to(weight.dtype)
            if self.training:
                self.qem_update(weight.detach(), index)
        return q + (weight - weight.detach())


class LQActQuantizer(nn.Module):
    """K-bit activations with one learned basis per layer (codes in {0,1}^K, lowest level 0)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        init = NORM_PPF_0_75 * 2 / (2**bits - 1) * 2.0 ** torch.arange(bits, dtype=torch.float32)
        self.register_buffer("basis", init)
        self.register_buffer("codes", code_table(bits, signed=False), persistent=False)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def levels(self) -> torch.Tensor:
        return self.codes @ self.basis

    @torch.no_grad()
    def qem_update(self, x: torch.Tensor, index: torch.Tensor) -> None:
        """One QEM step on the batch (statistics summed over processes), then the moving average."""
        btb, btx = normal_equations(x.reshape(1, -1), index.reshape(1, -1), self.codes)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            stats = torch.cat([btb.flatten(), btx.flatten()])
            dist.all_reduce(stats)
            btb, btx = stats[: btb.numel()].view_as(btb), stats[btb.numel():].view_as(btx)
        new, info = torch.linalg.solve_ex(btb[0], btx[0])
        if info.item() == 0 and torch.isfinite(new).all():
            self.basis.mul_(MOMENTUM).add_((1 - MOMENTUM) * new.to(self.basis.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            levels = self.levels()
            index = nearest_levels(x.detach().reshape(1, -1), levels[None])
            q = levels[index].view_as(x).to(x.dtype)
            top = levels.max()
            if self.training:
                self.qem_update(x.detach(), index)
        return q + (x - x.detach()) * (x <= top)


def quantize_model(
    model: nn.Module,
    weight_bits: int,
    act_bits: int | None = None,
    *,
    quantize_first: bool = False,
    quantize_last: bool = False,
) -> nn.Module:
    """LQ-Nets quantization of ``model`` (in place): K-bit weights, optionally K-bit activations.

    The first conv and the last linear stay in float by default, as in LQ-Nets.
    """

    def weight_quantizer(layer: nn.Module) -> nn.Module:
        k = layer.kernel_size[0] * layer.kernel_size[1] if isinstance(layer, nn.Conv2d) else 1
        out = layer.weight.shape[0]
        return LQWeightQuantizer(weight_bits, out, k * out).to(layer.weight.device)

    def act_quantizer() -> nn.Module:
        return LQActQuantizer(act_bits)

    return quantize_layers(
        model,
        weight_quantizer,
        act_quantizer if act_bits is not None and act_bits < 32 else None,
        quantize_first=quantize_first,
        quantize_last=quantize_last,
    )


@register_quantizer("lq")
def lq(
    *,
    model: nn.Module,
    weight_bits: int,
    act_bits: int | None = None,
    quantize_first: bool = False,
    quantize_last: bool = False,
) -> nn.Module:
    """Registered builder for recipes' ``quant: {method: lq, ...}``."""
    return quantize_model(model, weight_bits, act_bits, quantize_first=quantize_first, quantize_last=quantize_last)
