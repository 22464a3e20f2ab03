"""LQ-Nets learned quantizers (Zhang et al., ECCV 2018), as RS-Nets uses them (§4, Table 3).

A K-bit quantizer holds a basis ``v`` of K values; its 2^K levels are ``vᵀb`` for the
codes ``b`` (``{-1,+1}^K`` for weights, one basis per output channel; ``{0,1}^K`` for
activations, one basis per layer). Each value goes to the nearest level: thresholds are
the midpoints of the sorted levels, a value above a threshold goes to the upper level.

LQ-Nets' ``{0,1}^K`` activation codes assume a ReLU in front (the lowest level is 0).
Where a layer's input can be negative (MobileNetV2's linear bottlenecks, RefineNet's
fusion sums; decided from the graph by :mod:`rsvision.quant.sign`), the activation
quantizer is signed instead: codes ``{-1,+1}^K`` as for weights, with one basis per layer
and everything else as for LQ-Nets' activations.

QEM (LQ-Nets Alg. 1): in training mode every forward refits the basis to the current
codes ``B`` of the values ``x`` by least squares, ``v* = (BᵀB + εI)⁻¹(Bᵀx + εv)`` with
LQ-Nets' ridge ε = 1e-4 for weights and none for activations (a batch whose codes leave
``BᵀB`` singular keeps the old basis), then moves the basis by ``v ← 0.9 v + 0.1 v*``.
This is the plain moving average; TensorFlow's ``assign_moving_average`` debiases it, which
only changes the first few updates. Quantized values are computed with the basis from
before the update. Gradients go straight through to the float weights; for unsigned
activations they pass below the top level and are zero above it (LQ-Nets' ``min(x, top)``),
for signed ones they pass between the lowest and the top level and are zero outside.

Initial bases (LQ-Nets): weights ``v_j = 2^j · 0.6745 · sqrt(2/n) / 2^(K-1)`` with
``n = k·k·C_out`` (2 bits: ``0.6745·sqrt(2/n)·(1/2, 1)``); activations
``v_i = 2^i · 0.6745 · 2 / (2^K - 1)`` (2 bits: 0.4497, 0.8993). Signed activations take the
weight rule for a unit standard deviation, the scale of a BatchNorm output:
``v_j = 2^j · 0.6745 / 2^(K-1)`` (2 bits: 0.3373, 0.6745, levels ±0.3373, ±1.0118, whose
thresholds 0, ±0.6745 are the quartiles of a unit normal: the four levels start equally used).

The bases are buffers, so they are saved in the state dict and shared by every
resolution of an RS-Net (only BNs are private). Data parallelism: the weights are the
same on every process (DDP keeps them so), hence so are their codes and QEM updates; the
activation statistics (each level's count and sum, which give ``BᵀB`` and ``Bᵀx``) of
each batch are summed over processes with ``all_reduce`` when ``torch.distributed`` is
initialised, so every process fits the activation basis to the global batch and the bases
stay identical.

In a network converted by :func:`quantize_model`, an activation quantizer keeps its
statistics and every one of them is updated at the end of the network's forward
(:func:`update_quantizers`, a forward hook), with one ``all_reduce`` for all of them
instead of one per quantizer. The bases are the same as with an update inside each
quantizer's call: an update changes only its own basis, which is next used at the
quantizer's next call (a quantizer called twice in one forward updates before its second
call). Nothing in the forward or the update waits for the device (a singular ``BᵀB`` is
told apart with ``torch.where``, not a Python ``if``). A quantizer used on its own updates
within its call.
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


def _sorted_thresholds(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted levels ``[G, L]``, their code rows ``[G, L]`` and the midpoints ``[G, L-1]``."""
    sorted_levels, order = levels.sort(dim=1)
    return sorted_levels, order, (sorted_levels[:, 1:] + sorted_levels[:, :-1]) / 2


def nearest_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Code index (row of the code table) of the nearest level for each value.

    ``x`` is ``[G, n]`` and ``levels`` ``[G, 2^K]`` (one level set per group ``G``). A value
    strictly above the midpoint of two sorted levels takes the upper one.
    """
    _, order, thresholds = _sorted_thresholds(levels)
    position = torch.searchsorted(thresholds.contiguous(), x.contiguous())
    return order.gather(1, position)


def quantize_with_stats(x: torch.Tensor, levels: torch.Tensor, stats: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Nearest levels of ``x`` ``[G, n]`` and, if ``stats``, per code row the count and sum of its values.

    One pass per threshold (2^K - 1 of them): the values above threshold ``i`` take sorted
    level ``i + 1``; their count and sum, differenced, give each level's count and sum,
    which is all QEM needs (``BᵀB = Σ_l n_l b_l b_lᵀ``, ``Bᵀx = Σ_l s_l b_l``).

    The sums accumulate in float64 whatever the precision of ``x`` (half under autocast):
    in fp16 the sum of a large activation overflows, and in bf16 a level's sum, the
    difference of two rounded tail sums, can be far off.
    """
    sorted_levels, order, thresholds = _sorted_thresholds(levels)
    q = sorted_levels[:, :1].expand_as(x).clone()
    tail_count = [torch.full((x.shape[0],), x.shape[1], dtype=torch.float64, device=x.device)]
    tail_sum = [x.sum(1, dtype=torch.float64)]
    for i in range(thresholds.shape[1]):
        above = x > thresholds[:, i : i + 1]
        q = torch.where(above, sorted_levels[:, i + 1 : i + 2], q)
        if stats:
            tail_count.append(above.sum(1, dtype=torch.float64))
            tail_sum.append(torch.where(above, x, 0).sum(1, dtype=torch.float64))
    if not stats:
        return q, None, None
    zero = torch.zeros_like(tail_count[0])
    counts = torch.stack(tail_count, 1) - torch.stack(tail_count[1:] + [zero], 1)
    sums = torch.stack(tail_sum, 1) - torch.stack(tail_sum[1:] + [zero], 1)
    # per sorted level -> per code row
    return q, torch.zeros_like(counts).scatter_(1, order, counts), torch.zeros_like(sums).scatter_(1, order, sums)


def normal_equations(counts: torch.Tensor, sums: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``BᵀB`` ``[G, K, K]`` and ``Bᵀx`` ``[G, K]`` (float64) from per-code counts and sums ``[G, 2^K]``."""
    t = table.to(torch.float64)
    return torch.einsum("gl,lj,lk->gjk", counts, t, t), sums @ t


def solve_small(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a⁻¹ b`` for a batch of K x K systems (NaN where singular); closed form for K <= 2, as LQ-Nets does."""
    k = a.shape[-1]
    if k == 1:
        return b / a[..., 0]
    if k == 2:
        det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
        x0 = a[..., 1, 1] * b[..., 0] - a[..., 0, 1] * b[..., 1]
        x1 = a[..., 0, 0] * b[..., 1] - a[..., 1, 0] * b[..., 0]
        return torch.stack([x0, x1], -1) / det[..., None]
    x, info = torch.linalg.solve_ex(a, b)
    return torch.where((info == 0)[..., None], x, torch.nan)


class _ClippedStraightThrough(torch.autograd.Function):
    """Returns the quantized ``q``; the gradient goes to ``x`` where ``low <= x <= top``.

    ``low=None`` leaves no lower bound: LQ-Nets' ``min(x, top)`` for unsigned activations.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, q: torch.Tensor, low: torch.Tensor | None, top: torch.Tensor) -> torch.Tensor:
        inside = x <= top
        if low is not None:
            inside &= x >= low
        ctx.save_for_backward(inside)
        return q

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


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
        """``[C_out, 2^K]``: level ``i`` of channel ``c`` is ``codes[i] · basis[:, c]``.

        Written as a product and a sum, not a matmul, so autocast keeps it in float32.
        """
        return (self.codes[:, :, None] * self.basis[None]).sum(1).t()

    def encode(self, weight: torch.Tensor) -> torch.Tensor:
        """Code index of every weight, shaped ``[C_out, n]``."""
        return nearest_levels(weight.detach().reshape(weight.shape[0], -1), self.levels())

    def decode(self, index: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The quantized weight of shape ``shape`` from its code indices."""
        return self.levels().gather(1, index).view(shape)

    @torch.no_grad()
    def qem_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """One QEM step: ridge least squares of the weights on their codes, then the moving average."""
        btb, btw = normal_equations(counts, sums, self.codes)
        eye = torch.eye(self.bits, dtype=btb.dtype, device=btb.device)
        new = solve_small(btb + EPS * eye, btw + EPS * self.basis.t().double())
        self.basis.mul_(MOMENTUM).add_((1 - MOMENTUM) * new.t().to(self.basis.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w = weight.detach().reshape(weight.shape[0], -1)
            q, counts, sums = quantize_with_stats(w, self.levels(), self.training)
            if self.training:
                self.qem_update(counts, sums)
        return q.view_as(weight).to(weight.dtype) + (weight - weight.detach())


class _LQActivationQuantizer(nn.Module):
    """K-bit activations with one learned basis per layer; subclasses fix the codes and the initial basis."""

    signed: bool

    def __init__(self, bits: int, base: float) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("basis", base * 2.0 ** torch.arange(bits, dtype=torch.float32))
        self.register_buffer("codes", code_table(bits, signed=self.signed), persistent=False)
        #: Keep each call's statistics for :func:`update_quantizers` instead of updating in the call.
        self.deferred = False
        #: This process's per-code counts and sums ``[2, 1, 2^K]`` (float64) of the last call, not yet applied.
        self.pending: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    def levels(self) -> torch.Tensor:
        """``[2^K]``: level ``i`` is ``codes[i] · basis`` (float32 under autocast too)."""
        return (self.codes * self.basis).sum(1)

    @torch.no_grad()
    def qem_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """One QEM step from the batch's statistics (summed over processes), then the moving
        average; a singular ``BᵀB`` (non-finite ``v*``) keeps the basis."""
        btb, btx = normal_equations(counts, sums, self.codes)
        new = solve_small(btb, btx)[0]
        moved = MOMENTUM * self.basis + (1 - MOMENTUM) * new.to(self.basis.dtype)
        self.basis.copy_(torch.where(torch.isfinite(new).all(), moved, self.basis))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.pending is not None:  # a second call in one forward: the first one's update comes first
                apply_statistics([self])
            levels = self.levels()
            q, counts, sums = quantize_with_stats(x.detach().reshape(1, -1), levels[None], self.training)
            low = levels.min() if self.signed else None
            top = levels.max()
            if self.training:
                self.pending = torch.stack([counts, sums])
                if not self.deferred:
                    apply_statistics([self])
        return _ClippedStraightThrough.apply(x, q.view_as(x).to(x.dtype), low, top)


@torch.no_grad()
def apply_statistics(quantizers: list[_LQActivationQuantizer]) -> None:
    """The QEM update of each quantizer from its pending statistics, summed over processes
    in one ``all_reduce`` of all of them."""
    quantizers = [q for q in quantizers if q.pending is not None]
    if not quantizers:
        return
    stats = torch.cat([q.pending.flatten() for q in quantizers])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    for q, part in zip(quantizers, stats.split([q.pending.numel() for q in quantizers])):
        counts, sums = part.view_as(q.pending)
        q.pending = None
        q.qem_update(counts, sums)


def update_quantizers(model: nn.Module) -> None:
    """Apply the pending QEM updates of every LQ activation quantizer in ``model``, with one
    ``all_reduce`` for all (see the module docstring). :func:`quantize_model` makes it a
    forward hook of the model it converts, so training loops need not call it."""
    apply_statistics([m for m in model.modules() if isinstance(m, _LQActivationQuantizer)])


def _update_after_forward(model: nn.Module, args, output) -> None:
    update_quantizers(model)


class LQActQuantizer(_LQActivationQuantizer):
    """Unsigned K-bit activations (LQ-Nets): codes in {0,1}^K, lowest level 0; for inputs after a ReLU."""

    signed = False

    def __init__(self, bits: int) -> None:
        super().__init__(bits, NORM_PPF_0_75 * 2 / (2**bits - 1))


class LQSignedActQuantizer(_LQActivationQuantizer):
    """Signed K-bit activations: codes in {-1,+1}^K (symmetric levels); for inputs that can be negative."""

    signed = True

    def __init__(self, bits: int) -> None:
        super().__init__(bits, NORM_PPF_0_75 / 2 ** (bits - 1))


@register_quantizer("lq")
def quantize_model(
    model: nn.Module,
    weight_bits: int,
    act_bits: int | None = None,
    *,
    quantize_first: bool = False,
    quantize_last: bool = False,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """LQ-Nets quantization of ``model`` (in place): K-bit weights, optionally K-bit activations.

    The first conv and the last linear stay in float by default, as in LQ-Nets. Activations
    get :class:`LQActQuantizer` where the input is non-negative and
    :class:`LQSignedActQuantizer` where it can be negative, found from one forward pass of
    ``example_input`` (required with ``act_bits``; see :func:`quantize_layers`); in training
    mode they update at the end of each forward of ``model``, all with one ``all_reduce``
    (:func:`update_quantizers`, registered as its forward hook). Registered as the quantizer
    ``lq``, which a recipe's ``quant: {method: lq, ...}`` builds.
    """

    def weight_quantizer(layer: nn.Module) -> nn.Module:
        k = layer.kernel_size[0] * layer.kernel_size[1] if isinstance(layer, nn.Conv2d) else 1
        out = layer.weight.shape[0]
        return LQWeightQuantizer(weight_bits, out, k * out).to(layer.weight.device)

    def act_quantizer(signed: bool) -> nn.Module:
        q = LQSignedActQuantizer(act_bits) if signed else LQActQuantizer(act_bits)
        q.deferred = True  # updated at the end of the model's forward, all at once
        return q

    model = quantize_layers(
        model,
        weight_quantizer,
        act_quantizer if act_bits is not None and act_bits < 32 else None,
        quantize_first=quantize_first,
        quantize_last=quantize_last,
        example_input=example_input,
    )
    if any(isinstance(m, _LQActivationQuantizer) for m in model.modules()):
        model.register_forward_hook(_update_after_forward)
    return model

