"""Switchable batch normalisation: private BN per training resolution (RS-Nets §3.1, Eq. 3).

``make_switchable`` turns any CNN into a resolution-switchable one by replacing each
BatchNorm with a :class:`SwitchableBatchNorm` that holds one copy of it per training
resolution; convolutions and linear layers stay shared. ``at_resolution`` picks the BN
group. A resolution strictly between two trained ones uses BN parameters and statistics
linearly interpolated between its two neighbours (§4.3, "Denser Resolutions").

State-dict keys read ``<bn path>.groups.<resolution>.<tensor>``, e.g.
``layer1.0.bn1.groups.224.running_mean``; with ``shared_bn=True`` the single group is
``groups.shared``.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

SHARED = "shared"


def sorted_resolutions(resolutions: Sequence[int]) -> list[int]:
    """Unique resolutions, largest first (the paper's order: x_1 is the largest)."""
    out = sorted({int(r) for r in resolutions}, reverse=True)
    if not out or out[-1] <= 0:
        raise ValueError(f"resolutions must be positive integers, got {list(resolutions)}")
    return out


def interpolation_weights(resolutions: Sequence[int], r: int) -> tuple[int, int, float]:
    """Neighbours ``(hi, lo)`` of ``r`` among trained ``resolutions`` and the weight of ``hi``.

    The BN tensors at ``r`` are ``w * bn[hi] + (1 - w) * bn[lo]`` with
    ``w = (r - lo) / (hi - lo)``; outside the trained range both neighbours are the nearest
    trained resolution (w = 1).
    """
    res = sorted_resolutions(resolutions)
    if r >= res[0]:
        return res[0], res[0], 1.0
    if r <= res[-1]:
        return res[-1], res[-1], 1.0
    for hi, lo in zip(res, res[1:]):
        if lo <= r <= hi:
            return hi, lo, (r - lo) / (hi - lo)
    raise AssertionError("unreachable")


class SwitchableBatchNorm(nn.Module):
    """One BatchNorm per training resolution (Eq. 3), selected by ``self.resolution``.

    Each group is a copy of the original BN module, so its parameters, statistics and
    type (BatchNorm1d/2d, SyncBatchNorm, a library's BN subclass) are kept.
    """

    def __init__(self, bn: nn.Module, resolutions: Sequence[int], shared: bool = False) -> None:
        super().__init__()
        self.resolutions = sorted_resolutions(resolutions)
        self.shared = shared
        keys = [SHARED] if shared else [str(r) for r in self.resolutions]
        self.groups = nn.ModuleDict({k: copy.deepcopy(bn) for k in keys})
        self.resolution: int | None = None

    def extra_repr(self) -> str:
        return f"resolutions={self.resolutions}, shared={self.shared}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            return self.groups[SHARED](x)
        r = self.resolution
        if r is None:
            raise RuntimeError(
                "no resolution is set for this switchable BN: call the model through its "
                "RSNet wrapper, or use `with at_resolution(model, r):`"
            )
        key = str(r)
        if key in self.groups:
            return self.groups[key](x)
        if self.training:
            raise ValueError(
                f"resolution {r} was not trained (trained: {self.resolutions}); "
                "only trained resolutions can run in training mode"
            )
        return self._interpolated(x, r)

    def _interpolated(self, x: torch.Tensor, r: int) -> torch.Tensor:
        """§4.3: BN weight, bias, running mean and var interpolated between the neighbours."""
        hi, lo, w = interpolation_weights(self.resolutions, r)
        g_hi, g_lo = self.groups[str(hi)], self.groups[str(lo)]
        lo_state = dict(g_lo.named_parameters()) | dict(g_lo.named_buffers())
        state = {}
        for name, t_hi in list(g_hi.named_parameters()) + list(g_hi.named_buffers()):
            t_lo = lo_state[name]
            state[name] = torch.lerp(t_lo, t_hi, w) if t_hi.is_floating_point() else t_hi
        return functional_call(g_hi, state, (x,))


def _switchable_bns(module: nn.Module) -> Iterator[SwitchableBatchNorm]:
    return (m for m in module.modules() if isinstance(m, SwitchableBatchNorm))


def make_switchable(module: nn.Module, resolutions: Sequence[int], shared_bn: bool = False) -> nn.Module:
    """Replace every BatchNorm1d/2d in ``module`` (in place) by a :class:`SwitchableBatchNorm`.

    Each group starts from the original BN's parameters and buffers, so a pretrained
    network becomes an RS-Net starting point. The parameter count grows by exactly
    ``(S - 1) x`` the BN affine parameters. Returns ``module`` (or the replacement when
    ``module`` itself is a BatchNorm).
    """
    res = sorted_resolutions(resolutions)
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
    if isinstance(module, bn_types):
        return SwitchableBatchNorm(module, res, shared_bn)
    for name, child in list(module.named_children()):
        if isinstance(child, SwitchableBatchNorm):
            continue
        if isinstance(child, bn_types):
            setattr(module, name, SwitchableBatchNorm(child, res, shared_bn))
        else:
            make_switchable(child, res, shared_bn)
    return module


def trained_resolutions(module: nn.Module) -> list[int]:
    """The training resolutions of a switchable module (largest first); [] if it has none."""
    if isinstance(module, RSNet):
        return module.resolutions
    bn = next(_switchable_bns(module), None)
    return list(bn.resolutions) if bn is not None else []


def _check_range(module: nn.Module, r: int | None) -> None:
    res = trained_resolutions(module)
    if r is not None and res and not (res[-1] <= r <= res[0]):
        nearest = res[0] if r > res[0] else res[-1]
        warnings.warn(
            f"resolution {r} is outside the trained range {res[-1]}..{res[0]}; "
            f"using the BN group of {nearest}",
            stacklevel=3,
        )


def set_resolution(module: nn.Module, r: int | None) -> None:
    """Select the BN group of resolution ``r`` in every switchable BN of ``module``.

    ``None`` clears the choice: an :class:`RSNet` then picks it from each input's size.
    """
    r = None if r is None else int(r)
    _check_range(module, r)
    for m in module.modules():
        if isinstance(m, (SwitchableBatchNorm, RSNet)):
            m.resolution = r


@contextmanager
def at_resolution(module: nn.Module, r: int | None) -> Iterator[nn.Module]:
    """Run ``module`` at resolution ``r`` inside the block; the previous choice is restored."""
    saved = [(m, m.resolution) for m in module.modules() if isinstance(m, (SwitchableBatchNorm, RSNet))]
    set_resolution(module, r)
    try:
        yield module
    finally:
        for m, prev in saved:
            m.resolution = prev


def resolution_of(x: torch.Tensor) -> int:
    """The resolution of an input batch: round(sqrt(H * W))."""
    h, w = x.shape[-2:]
    return int(round((h * w) ** 0.5))


class RSNet(nn.Module):
    """A resolution-switchable network: ``body`` with private BNs, shared everything else.

    ``forward`` takes one batch (its resolution is read from its size unless one was set
    with :func:`set_resolution`) or a list of batches, one per resolution, returning a
    list of outputs: one call for all resolutions keeps data-parallel wrappers simple.
    The training resolutions are stored as a buffer, so they travel with the weights.
    """

    def __init__(self, body: nn.Module, resolutions: Sequence[int], shared_bn: bool = False) -> None:
        super().__init__()
        res = sorted_resolutions(resolutions)
        self.body = make_switchable(body, res, shared_bn)
        self.register_buffer("trained_resolutions", torch.tensor(res, dtype=torch.long))
        self.resolution: int | None = None

    @property
    def resolutions(self) -> list[int]:
        return [int(r) for r in self.trained_resolutions]

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]):
        if isinstance(x, (list, tuple)):
            return [self._forward_one(xi) for xi in x]
        return self._forward_one(x)

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resolution if self.resolution is not None else resolution_of(x)
        with at_resolution(self.body, r):
            return self.body(x)
