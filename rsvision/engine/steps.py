"""One training step, two ways (``train.memory``): forward and backward of L (Eq. 9).

``standard``: the S resolutions go through the network together and one backward follows,
so the activations of all S resolutions are alive at once.

``low``: MRED's teachers carry no gradient (z_0 is built from detached logits, Eq. 5, and
D_kl(p_t || p_s) detaches p_t, Eq. 7), so L = L_ens + sum_s (ce_s + dis_s) where resolution
s reaches the network only through its own term (:meth:`MREDLoss.student_loss`). The step
first gets the teacher logits without gradient, then runs forward and backward of each
resolution's term alone, freeing its activations before the next: peak activation memory is
that of the largest resolution instead of all S, for one extra forward per resolution. The
gradients are those of the standard step.

The teacher pass runs in training mode (BN batch statistics, exactly the logits the
standard step sees), with every buffer (BN running statistics, quantizer bases) and the
random state (dropout) restored afterwards: running statistics move once per step, and the
gradient passes repeat the teacher pass's computation. It is skipped when no pair has the
ensemble as teacher (``topdown``, ``from_largest``, ``off``): the teachers are then larger
resolutions, which run first.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from rsvision.mred import MREDLoss, MREDOutput, distillation_pairs
from rsvision.switchable import RSNet


class MultiResolutionModel(nn.Module):
    """The network and its MRED criterion as one module, so data parallelism also
    averages the gradient of alpha. ``forward`` runs all S resolutions of a batch and
    returns the logits as the loss saw them, with the loss terms."""

    def __init__(self, model: RSNet, criterion: MREDLoss, loss_logits: Callable) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.loss_logits = loss_logits

    def forward(self, batch: dict[str, Any]) -> tuple[list[torch.Tensor], MREDOutput]:
        logits = self.loss_logits(self.model(batch["images"]), batch)
        return logits, self.criterion(logits, batch["target"])


def standard_step(wrapped: nn.Module, batch: dict[str, Any], accelerator) -> tuple[list[torch.Tensor], MREDOutput]:
    """All resolutions forward, one backward of L."""
    logits, out = wrapped(batch)
    accelerator.backward(out.total)
    return logits, out


@contextmanager
def frozen_state(module: nn.Module) -> Iterator[None]:
    """Run the block in training mode without leaving a trace: buffers and RNG restored."""
    saved = [b.detach().clone() for b in module.buffers()]
    devices = sorted({b.device.index for b in module.buffers() if b.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield
    with torch.no_grad():
        for b, s in zip(module.buffers(), saved):
            b.copy_(s)


def low_memory_step(wrapped: nn.Module, batch: dict[str, Any], accelerator) -> tuple[list[torch.Tensor], MREDOutput]:
    """Forward and backward one resolution at a time (see the module docstring).

    ``wrapped`` is the prepared :class:`MultiResolutionModel`. Under data parallelism its
    network is called directly (one process's backward per resolution would otherwise
    all-reduce S times, and DDP expects every parameter in each backward); the gradients
    are averaged across processes once, when the optimiser is about to step.
    """
    module: MultiResolutionModel = accelerator.unwrap_model(wrapped)
    model, criterion, images, target = module.model, module.criterion, batch["images"], batch["target"]
    S = len(images)
    prepass = any(t == 0 for t, _ in distillation_pairs(S, criterion.mode))
    teachers: list[torch.Tensor | None] = [None] * (S + 1)
    if prepass:
        with torch.no_grad(), frozen_state(model), accelerator.autocast():
            logits = module.loss_logits(model(images), batch)
        teachers[1:] = [z.float() for z in logits]
        teachers[0] = criterion.ensemble(teachers[1:]).detach()
    ce_terms, dis_terms = [], []
    for s, x in enumerate(images, start=1):
        with accelerator.autocast():
            z = module.loss_logits([model(x)], batch)[0]
        ce, dis = criterion.student_loss(s, z, teachers, target)
        accelerator.backward(ce + dis)
        teachers[s] = z.detach().float()
        ce_terms.append(ce.detach())
        dis_terms.append(dis.detach())
    loss_ens, z0 = criterion.ensemble_loss(teachers[1:], target)
    accelerator.backward(loss_ens)
    if accelerator.num_processes > 1 and accelerator.sync_gradients:
        average_gradients(module.parameters())
    loss_cls, loss_dis = torch.stack(ce_terms).sum(), torch.stack(dis_terms).sum()
    out = MREDOutput(
        total=loss_cls + loss_ens.detach() + loss_dis,
        cls=loss_cls,
        ens=loss_ens.detach(),
        dis=loss_dis,
        weights=criterion.weights.detach(),
        cls_per_resolution=ce_terms,
        ensemble_logits=z0.detach(),
    )
    return teachers[1:], out


def average_gradients(parameters: Iterator[nn.Parameter]) -> None:
    """Mean of every gradient over the processes, in one all-reduce."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


STEPS = {"standard": standard_step, "low": low_memory_step}
