"""Recomputed BN statistics for any sub-network (post-statistics: US-Nets, MutualNet; OFA).

An RS-Net has BN statistics for its trained resolutions and interpolates the others
(§4.3). Calibration instead measures them: for each requested sub-network, every
switchable BN gets a new *calibrated* group whose affine parameters are what the layer
uses for that sub-network now (its own group, or the §4.3 interpolation of its two
neighbours, or the nearest group outside the trained range) and whose running mean and
variance are the cumulative average (BN with ``momentum=None``) of the batch statistics
over training images, fed through the network in evaluation mode (no dropout, no
quantizer updates) with only the calibrated groups in training mode. The images are the
first ``images`` of a seeded shuffle of the training split, in the evaluation view
(shorter side to int(r / 0.875), centre crop), so the statistics match what evaluation sees.

Calibrated groups are stored beside the weights (``calibration.safetensors``), leaving
the trained groups untouched; evaluation prefers a calibrated group where one exists. The
file records the SHA-256 of the weights it was measured on: if the run trains on, the
stale statistics are ignored (with a warning) until calibrated again.
:func:`calibrated_for` calibrates for one block of code only (validation during training
with post-hoc BN), leaving the model's calibrated groups as they were.

Width-switchable sub-networks (``160w50``) are calibrated alike: a narrower sub-network
updates the first channels of its group's statistics.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from rsvision.errors import UserError
from rsvision.nn.surgery import eval_mode
from rsvision.nn.switchable import (
    at_subnet,
    subnet_status,
    switchable_bns,
    trained_subnets,
)
from rsvision.subnet import SubNet, SubNetLike, subnets_of

DEFAULT_IMAGES = 2000


@torch.no_grad()
def calibrate(
    model: nn.Module,
    task: Any,
    subnets: Sequence[SubNetLike],
    images: int = DEFAULT_IMAGES,
    batch_size: int | None = None,
    seed: int = 0,
    progress=None,
) -> int:
    """Recompute BN statistics of ``subnets`` in place (see the module docstring); returns the images used.

    ``task`` gives the images (:meth:`rsvision.tasks.Task.calibration_loader`).
    """
    subnets = subnets_of(subnets)
    bns = switchable_bns(model)
    if not bns:
        raise UserError("calibration needs a switchable network (it has no switchable BatchNorm)")
    if images < 1:
        raise UserError(f"calibration needs at least one image, got images={images}")
    for subnet in subnets:
        check_servable(model, subnet)
    resolutions = sorted({s.resolution for s in subnets}, reverse=True)
    loader = task.calibration_loader(resolutions, images, batch_size, seed, device=next(model.parameters()).device)
    with eval_mode(model):  # the calibrated groups alone in training mode
        previous = [(bn, dict(bn.calibrated)) for bn in bns]
        for bn in bns:  # a sub-network calibrated again starts from the trained groups, not its old statistics
            for subnet in subnets:
                if subnet.id in bn.calibrated:
                    del bn.calibrated[subnet.id]
        # Not pinned while adding: the layer's plan (nearest, interpolated) is what is copied, not a warning.
        groups = [bn.add_calibrated(subnet).train() for subnet in subnets for bn in bns]
        device = next(model.parameters()).device
        task_id = progress.add_task("calibrate", total=len(loader), epoch="calibrate", stats="") if progress else None
        try:
            for batch in loader:
                for subnet in subnets:
                    x = _to_device(batch["images"][resolutions.index(subnet.resolution)], device)
                    with at_subnet(model, subnet):
                        model(x)
                if progress:
                    progress.advance(task_id)
        except BaseException:  # half-computed statistics never stay: the model keeps its earlier groups
            for bn, saved in previous:
                bn.calibrated.clear()
                bn.calibrated.update(saved)
            raise
        finally:
            for g in groups:
                g.eval()
            if progress:
                progress.remove_task(task_id)
    return len(loader.dataset)


def _to_device(x: torch.Tensor | Sequence[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    """A batch tensor, or a list of images of different sizes (detection), on ``device``."""
    return x.to(device) if isinstance(x, torch.Tensor) else [t.to(device) for t in x]


def unservable(model: nn.Module, subnet: SubNet) -> str | None:
    """Why ``model`` has no BatchNorm parameters to serve ``subnet`` with, or None when it has.

    A width needs a width axis and must lie in the trained width range (MutualNet trains
    the range; a width outside it has neither statistics nor affine parameters of its own).
    """
    trained = trained_subnets(model)
    widths = sorted(s.width for s in trained if s.width is not None)
    listed = ", ".join(s.id for s in trained)
    if subnet.width is not None and not widths:
        return f"the run has no width axis (trained sub-networks: {listed}); give a resolution"
    if subnet.width is not None and not widths[0] - 1e-9 <= subnet.width <= widths[-1] + 1e-9:
        return f"width {subnet.width:g} is outside the trained width range {widths[0]:g}..{widths[-1]:g}"
    try:
        subnet_status(model, subnet)
    except ValueError:
        return f"the network has no BatchNorm parameters for it (trained sub-networks: {listed})"
    return None


def check_servable(model: nn.Module, subnet: SubNet, source: str = "") -> None:
    """A :class:`UserError` naming ``subnet`` when calibration has no BN parameters to start from (:func:`unservable`)."""
    reason = unservable(model, subnet)
    if reason:
        raise UserError(f"{source + ': ' if source else ''}cannot calibrate sub-network {subnet.id} ({subnet.label()}): {reason}")


@contextmanager
def calibrated_for(model: nn.Module, task, subnets: Sequence[SubNetLike], images: int, seed: int = 0) -> Iterator[int]:
    """Calibrate ``subnets`` for the block only (yields the images used); afterwards every
    switchable BN has the calibrated groups it had before."""
    bns = switchable_bns(model)
    saved = [dict(bn.calibrated.items()) for bn in bns]
    try:
        yield calibrate(model, task, subnets, images, seed=seed)
    finally:
        for bn, before in zip(bns, saved):
            bn.calibrated = nn.ModuleDict(before)


def calibrated_subnets(model: nn.Module) -> list[SubNet]:
    bn = next(iter(switchable_bns(model)), None)
    return [SubNet.parse(k) for k in bn.calibrated] if bn is not None else []


def calibration_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".calibrated." in k}


