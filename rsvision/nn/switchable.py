"""Switchable networks: private BN per sub-network (RS-Nets §3.1, Eq. 3), shared everything else.

``make_switchable`` turns any CNN into a switchable one by replacing each BatchNorm with a
:class:`SwitchableBatchNorm` holding one copy of it per trained sub-network (for RS-Nets,
per training resolution); convolutions and linear layers stay shared. The active
sub-network is chosen with ``at_subnet`` / ``at_resolution`` or, inside an :class:`RSNet`,
from the input size.

How a BN layer serves a sub-network (:meth:`SwitchableBatchNorm.status`):

- ``calibrated``: statistics recomputed for it after training (``rsvision.nn.bn_stats``),
  used in evaluation whenever they exist;
- ``trained``: its own group;
- ``shared``: the single group shared by all trained sub-networks (``shared_bn``, MutualNet's
  BN during training), whose running statistics mix theirs; recompute them with
  ``rsvision.nn.bn_stats`` to give the sub-network statistics of its own;
- ``interpolated``: a resolution strictly between two trained ones of the same width
  uses BN parameters and statistics linearly interpolated between them (§4.3);
- ``nearest``: outside the trained range, the nearest trained resolution (with a warning).

Modules that change with the sub-network derive from :class:`Switchable` and read
``self.subnet``. State-dict keys read ``<bn path>.groups.<subnet id>.<tensor>`` (e.g.
``layer1.0.bn1.groups.224.running_mean``), ``groups.shared`` with one shared group, and
``<bn path>.calibrated.<subnet id>.<tensor>`` for recomputed statistics.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from rsvision.nn.surgery import set_submodule
from rsvision.subnet import SubNet, SubNetLike, subnets_of

SHARED = "shared"
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


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


class Switchable(nn.Module):
    """A module whose computation depends on the active sub-network ``self.subnet``."""

    subnet: SubNet | None = None


class SwitchableBatchNorm(Switchable):
    """One BatchNorm per trained sub-network (Eq. 3), selected by ``self.subnet``.

    Each group is a copy of the original BN module, so its parameters, statistics and
    type (BatchNorm1d/2d, SyncBatchNorm, a library's BN subclass) are kept. An input with
    fewer channels than the BN (a narrower sub-network) uses the first channels of it.
    """

    def __init__(self, bn: nn.Module, subnets: Sequence[SubNetLike], shared: bool = False) -> None:
        super().__init__()
        self.subnets = subnets_of(subnets)
        self.shared = shared
        keys = [SHARED] if shared else [s.id for s in self.subnets]
        self.groups = nn.ModuleDict({k: copy.deepcopy(bn) for k in keys})
        self.calibrated = nn.ModuleDict()
        self.subnet = None

    @property
    def resolutions(self) -> list[int]:
        return sorted_resolutions([s.resolution for s in self.subnets])

    @property
    def num_features(self) -> int:
        return next(iter(self.groups.values())).num_features

    def extra_repr(self) -> str:
        return f"subnets={[s.id for s in self.subnets]}, shared={self.shared}"

    def status(self, subnet: SubNet) -> str:
        """How ``subnet`` is served in evaluation: calibrated, trained, shared, interpolated or nearest."""
        return self._plan(subnet, training=False)[0]

    def _plan(self, subnet: SubNet, training: bool) -> tuple[str, tuple]:
        """``(status, how)``: ``how`` is ``(group,)`` or ``(hi_group, lo_group, weight)``."""
        if not training and subnet.id in self.calibrated:
            return "calibrated", (self.calibrated[subnet.id],)
        if self.shared:
            return ("shared" if len(self.subnets) > 1 else "trained"), (self.groups[SHARED],)
        if subnet.id in self.groups:
            return "trained", (self.groups[subnet.id],)
        if training:
            trained = ", ".join(s.id for s in self.subnets)
            raise ValueError(
                f"sub-network {subnet.id} was not trained (trained: {trained}); "
                "only trained sub-networks can run in training mode"
            )
        same_width = [s.resolution for s in self.subnets if s.width == subnet.width]
        if not same_width:
            raise ValueError(
                f"sub-network {subnet.label()} has no BatchNorm of its own and no trained resolution at "
                "its width to interpolate from; recompute its statistics with `rsvision calibrate`"
            )
        hi, lo, w = interpolation_weights(same_width, subnet.resolution)
        g_hi, g_lo = self.groups[subnet.with_resolution(hi).id], self.groups[subnet.with_resolution(lo).id]
        if hi == lo:
            return ("trained" if hi == subnet.resolution else "nearest"), (g_hi,)
        return "interpolated", (g_hi, g_lo, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subnet is None:
            raise RuntimeError(
                "no sub-network is set for this switchable BN: call the model through its "
                "RSNet wrapper, or use `with at_subnet(model, ...)` / `with at_resolution(model, r)`"
            )
        _, how = self._plan(self.subnet, self.training)
        if len(how) == 1:
            group = how[0]
            if x.shape[1] == group.num_features:
                return group(x)
            return _batch_norm(group, x, {})
        state = _lerp_state(*how)
        if x.shape[1] == how[0].num_features:
            # The group's own forward on the interpolated tensors: a BN subclass that does
            # more than normalize (timm's BatchNormAct2d applies its activation) keeps doing it.
            return functional_call(how[0], state, (x,))
        return _batch_norm(how[0], x, state)

    def materialize(self, subnet: SubNet, channels: int | None = None) -> nn.Module:
        """A plain BN module computing what this layer computes for ``subnet`` in evaluation."""
        _, how = self._plan(subnet, training=False)
        bn = copy.deepcopy(how[0]).eval()
        if len(how) == 3:
            with torch.no_grad():
                for name, t in _lerp_state(*how).items():
                    _tensor_of(bn, name).copy_(t)
        return bn if channels is None or channels == bn.num_features else _narrow_bn(bn, channels)

    def add_calibrated(self, subnet: SubNet) -> nn.Module:
        """A new statistics group for ``subnet``: affine parameters as it is served now, statistics reset.

        The statistics are a cumulative average (``momentum=None``) until recomputed.
        """
        bn = self.materialize(subnet)
        bn.reset_running_stats()
        bn.momentum = None
        self.calibrated[subnet.id] = bn
        return bn


def _tensor_of(module: nn.Module, name: str) -> torch.Tensor:
    return getattr(module, name)


def _lerp_state(g_hi: nn.Module, g_lo: nn.Module, w: float) -> dict[str, torch.Tensor]:
    """§4.3: every floating tensor (weight, bias, running mean and var) as ``lerp(lo, hi, w)``."""
    lo_state = dict(g_lo.named_parameters()) | dict(g_lo.named_buffers())
    state = {}
    for name, t_hi in list(g_hi.named_parameters()) + list(g_hi.named_buffers()):
        state[name] = torch.lerp(lo_state[name], t_hi, w) if t_hi.is_floating_point() else t_hi
    return state


def _batch_norm(bn: nn.Module, x: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """``bn``'s own forward on the first ``x.shape[1]`` channels, with tensors taken from ``state`` where given.

    The module's forward runs (``functional_call``), so BN subclasses keep what they add
    (timm's ``BatchNormAct2d`` applies its activation) and ``nn.BatchNorm``'s rules hold:
    batch statistics in training mode, running statistics updated in place (the sliced
    tensors are views of the module's buffers), cumulative average when ``momentum`` is None.
    """
    if isinstance(bn, nn.SyncBatchNorm) and bn.training:
        raise ValueError("a narrower sub-network cannot use SyncBatchNorm in training; use plain BN")
    c = x.shape[1]
    tensors = {}
    for name, t in [*bn.named_parameters(recurse=False), *bn.named_buffers(recurse=False)]:
        t = state.get(name, t)
        tensors[name] = t[:c] if t.dim() else t
    return functional_call(bn, tensors, (x,))


@torch.no_grad()
def _narrow_bn(bn: nn.Module, channels: int) -> nn.Module:
    """A copy of ``bn`` (same type and extras) holding the first ``channels`` of its tensors."""
    out = copy.deepcopy(bn)
    for name, p in list(out.named_parameters(recurse=False)):
        setattr(out, name, nn.Parameter(p[:channels].clone(), requires_grad=p.requires_grad))
    for name, b in list(out.named_buffers(recurse=False)):
        if b.dim():
            setattr(out, name, b[:channels].clone())
    out.num_features = channels
    return out.eval()


def switchable_bns(module: nn.Module) -> list[SwitchableBatchNorm]:
    return [m for m in module.modules() if isinstance(m, SwitchableBatchNorm)]


def make_switchable(module: nn.Module, subnets: Sequence[SubNetLike], shared_bn: bool = False) -> nn.Module:
    """Replace every BatchNorm1d/2d in ``module`` (in place) by a :class:`SwitchableBatchNorm`.

    ``subnets`` are the trained sub-networks: resolutions (``[224, 160, 96]``) or
    :class:`~rsvision.subnet.SubNet` values. Each group starts from the original BN's
    parameters and buffers, so a pretrained network becomes a switchable starting point.
    The parameter count grows by exactly ``(S - 1) x`` the BN affine parameters. Returns
    ``module`` (or the replacement when ``module`` itself is a BatchNorm).
    """
    subnets = subnets_of(subnets)
    if isinstance(module, BN_TYPES):
        return SwitchableBatchNorm(module, subnets, shared_bn)
    for name, child in list(module.named_children()):
        if isinstance(child, SwitchableBatchNorm):
            continue
        if isinstance(child, BN_TYPES):
            setattr(module, name, SwitchableBatchNorm(child, subnets, shared_bn))
        else:
            make_switchable(child, subnets, shared_bn)
    return module


def trained_subnets(module: nn.Module) -> list[SubNet]:
    """The trained sub-networks of a switchable module; [] if it has none."""
    if isinstance(module, RSNet):
        return list(module.subnets)
    bn = next(iter(switchable_bns(module)), None)
    return list(bn.subnets) if bn is not None else []


def trained_resolutions(module: nn.Module) -> list[int]:
    """The training resolutions of a switchable module (largest first); [] if it has none."""
    subnets = trained_subnets(module)
    return sorted_resolutions([s.resolution for s in subnets]) if subnets else []


def subnet_status(module: nn.Module, subnet: SubNetLike) -> str:
    """``calibrated``, ``trained``, ``interpolated`` or ``nearest`` (see the module docstring)."""
    subnet = SubNet.parse(subnet)
    bn = next(iter(switchable_bns(module)), None)
    return bn.status(subnet) if bn is not None else "trained"


def _warn_if_outside(subnet: SubNet, trained: list[int], status: str) -> None:
    if status == "nearest":
        nearest = trained[0] if subnet.resolution > trained[0] else trained[-1]
        warnings.warn(
            f"resolution {subnet.resolution} is outside the trained range {trained[-1]}..{trained[0]}; "
            f"using the BN group of {nearest}",
            stacklevel=3,
        )


def _pin(module: nn.Module, subnet: SubNet | None) -> list[tuple[nn.Module, SubNet | None]]:
    """Set ``subnet`` on every switchable module and RSNet in ``module`` (one walk); returns what was there."""
    targets = [m for m in module.modules() if isinstance(m, (Switchable, RSNet))]
    saved = [(m, m.subnet if isinstance(m, Switchable) else m.pinned) for m in targets]
    for m in targets:
        if isinstance(m, RSNet):
            m.pinned = subnet
        else:
            m.subnet = subnet
    if subnet is not None and not module.training:
        bn = next((m for m in targets if isinstance(m, SwitchableBatchNorm)), None)
        if bn is not None and subnet.width in {s.width for s in bn.subnets}:
            _warn_if_outside(subnet, bn.resolutions, bn.status(subnet))
    return saved


def _restore(saved: list[tuple[nn.Module, SubNet | None]]) -> None:
    for m, prev in saved:
        if isinstance(m, RSNet):
            m.pinned = prev
        else:
            m.subnet = prev


@contextmanager
def at_subnet(module: nn.Module, subnet: SubNetLike | None) -> Iterator[nn.Module]:
    """Run ``module`` as ``subnet`` inside the block; the previous choice is restored.

    ``None`` clears the choice: an :class:`RSNet` then picks the resolution from each input.
    """
    saved = _pin(module, None if subnet is None else SubNet.parse(subnet))
    try:
        yield module
    finally:
        _restore(saved)


def set_subnet(module: nn.Module, subnet: SubNetLike | None) -> None:
    """Select ``subnet`` until changed again (``None``: an RSNet picks it from each input)."""
    _pin(module, None if subnet is None else SubNet.parse(subnet))


def _at_width_of(module: nn.Module, r: int | None) -> SubNet | None:
    """Resolution ``r`` at the module's default width."""
    if r is None:
        return None
    width = max((s.width for s in trained_subnets(module) if s.width is not None), default=None)
    return SubNet(int(r), width)


def at_resolution(module: nn.Module, r: int | None):
    """Run ``module`` at resolution ``r`` (its default width) inside the block."""
    return at_subnet(module, _at_width_of(module, r))


def set_resolution(module: nn.Module, r: int | None) -> None:
    """Select resolution ``r`` until changed again (``None``: pick it from each input)."""
    set_subnet(module, _at_width_of(module, r))


def resolution_of(x: torch.Tensor) -> int:
    """The resolution of an input batch: its side if square, else round(sqrt(H * W)) (same pixel count)."""
    h, w = x.shape[-2:]
    return h if h == w else int(round((h * w) ** 0.5))


class RSNet(nn.Module):
    """A switchable network: ``body`` with private BNs per trained sub-network, shared everything else.

    ``forward`` takes one batch or a list of batches (one per resolution, returning a list
    of outputs: one call for all resolutions keeps data-parallel wrappers simple). The
    sub-network is the one pinned with :func:`at_subnet`, else the input's resolution at
    the network's default width. Inputs are square in training (each must be a trained
    resolution); a non-square input in evaluation runs at the resolution of the same pixel
    count, round(sqrt(H * W)), with a warning. The training resolutions are stored as a
    buffer, so they travel with the weights.
    """

    def __init__(self, body: nn.Module, subnets: Sequence[SubNetLike], shared_bn: bool = False) -> None:
        super().__init__()
        self.subnets = subnets_of(subnets)
        self.body = make_switchable(body, self.subnets, shared_bn)
        res = sorted_resolutions([s.resolution for s in self.subnets])
        self.register_buffer("trained_resolutions", torch.tensor(res, dtype=torch.long))
        self.pinned: SubNet | None = None
        widths = [s.width for s in self.subnets if s.width is not None]
        self.default_width: float | None = max(widths) if widths else None
        self._warned_shapes: set[tuple[int, int]] = set()

    @property
    def resolutions(self) -> list[int]:
        return [int(r) for r in self.trained_resolutions]

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor]):
        if isinstance(x, (list, tuple)):
            return [self._forward_one(xi) for xi in x]
        return self._forward_one(x)

    def subnet_for(self, x: torch.Tensor) -> SubNet:
        """The sub-network an input runs as (see the class docstring)."""
        if self.pinned is not None:
            return self.pinned
        h, w = x.shape[-2:]
        if h != w:
            if self.training:
                raise ValueError(f"training inputs must be square (a trained resolution), got {h}x{w}")
            if (h, w) not in self._warned_shapes:
                self._warned_shapes.add((h, w))
                warnings.warn(
                    f"input {h}x{w} is not square: running at resolution {resolution_of(x)} "
                    "(the square of the same pixel count)",
                    stacklevel=4,
                )
        return SubNet(resolution_of(x), self.default_width)

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        subnet = self.subnet_for(x)
        with at_subnet(self.body, subnet):
            return self.body(x)


@torch.no_grad()
def materialize(model: nn.Module, subnet: SubNetLike) -> nn.Module:
    """A plain network computing what ``model`` computes as ``subnet`` in evaluation.

    Every switchable layer is replaced by the fixed layer it stands for (a BN group,
    interpolated or calibrated statistics, a slice of a width-switchable layer), so
    nothing switchable is left: ready to fold BN into convolutions and to export. Each
    layer's ``materialize(subnet, channels)`` gets the input channels it sees as
    ``subnet`` (None at full width), measured in one forward pass.
    """
    subnet = SubNet.parse(subnet)
    body = model.body if isinstance(model, RSNet) else model
    plain = copy.deepcopy(body).eval()
    with at_subnet(plain, subnet):
        widths = _active_widths(plain, subnet, body)
    for name, m in list(plain.named_modules()):
        if name and hasattr(m, "materialize"):
            set_submodule(plain, name, m.materialize(subnet, widths.get(name)))
    return plain


def _active_widths(plain: nn.Module, subnet: SubNet, body: nn.Module) -> dict[str, int]:
    """Input channels of each switchable layer as ``subnet`` (from one forward pass when widths switch)."""
    if subnet.width is None or subnet.width >= 1.0:
        return {}
    seen: dict[str, int] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].shape[1]))
        for name, m in plain.named_modules()
        if isinstance(m, Switchable)
    ]
    try:
        example = _example_input(body, subnet.resolution)
        plain(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _example_input(body: nn.Module, resolution: int) -> torch.Tensor:
    first = next(m for m in body.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    channels = first.in_channels if isinstance(first, nn.Conv2d) else first.in_features
    return torch.zeros(1, channels, resolution, resolution, device=first.weight.device)
