"""RS-Nets training: all S resolutions of every batch, L = L_cls + L_ens + L_dis (Eq. 9).

Two steps (``train.memory``):

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
gradient passes repeat the teacher pass's computation. It is skipped when the ensemble
teaches no pair (``topdown``, ``from_largest``, ``off``): the teachers are then larger
resolutions, which run first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rsvision.data.transforms import batch_resolutions
from rsvision.nn.switchable import RSNet
from rsvision.recipe import Recipe
from rsvision.registry import register_method
from rsvision.tasks.base import Task
from rsvision.training.base import StepContext, StepOutput, TrainingMethod, frozen_state
from rsvision.training.ensemble import AlphaEnsemble
from rsvision.training.loss import MREDLoss, MREDOutput
from rsvision.training.mixup import BatchMix, loss_target


def mred_standard(model: nn.Module, criterion: MREDLoss, task: Task, images: list[torch.Tensor], batch: dict[str, Any]) -> tuple[MREDOutput, list[torch.Tensor]]:
    """All resolutions forward at once; the loss of Eq. 9 (one graph) and the logits."""
    logits = task.loss_logits(model(images), batch)
    return criterion(logits, loss_target(batch)), logits


def mred_low_memory(
    model: nn.Module, criterion: MREDLoss, task: Task, images: list[torch.Tensor], batch: dict[str, Any], ctx: StepContext
) -> tuple[MREDOutput, list[torch.Tensor]]:
    """Forward and backward one resolution at a time (see the module docstring); the loss
    terms (detached) and the detached logits."""
    target = loss_target(batch)
    S = len(images)
    teachers: list[torch.Tensor | None] = [None] * (S + 1)
    if criterion.ensemble_teaches:
        with torch.no_grad(), frozen_state(model), ctx.autocast():
            logits = task.loss_logits(model(images), batch)
        teachers[1:] = [z.float() for z in logits]
        teachers[0] = criterion.ensemble(teachers[1:]).detach()
    ce_terms, dis_terms = [], []
    for s, x in enumerate(images, start=1):
        with ctx.autocast():
            z = task.loss_logits([model(x)], batch)[0]
        ce, dis = criterion.student_loss(s, z, teachers, target)
        ctx.backward(ce + dis)
        teachers[s] = z.detach().float()
        ce_terms.append(ce.detach())
        dis_terms.append(dis.detach())
    loss_ens, z0 = criterion.ensemble_loss(teachers[1:], target)
    ctx.backward(loss_ens)
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
    return out, teachers[1:]


@register_method("rsnets")
class MREDTraining(AlphaEnsemble, TrainingMethod):
    """The network and its MRED criterion as one module, so data parallelism also averages
    the gradient of alpha."""

    recipe_fields = frozenset({"mred.mode", "train.label_smoothing", "train.mixup"})

    def __init__(self, model: RSNet, task: Task, recipe: Recipe) -> None:
        super().__init__(model, task, recipe)
        self.resolutions = list(recipe.resolutions)
        self.criterion = MREDLoss(
            len(self.resolutions), mode=recipe.mred.mode, ignore_index=task.ignore_index, label_smoothing=recipe.train.label_smoothing
        )
        self.multi_backward = recipe.train.memory == "low"
        self.mix = BatchMix(recipe, recipe.model.num_classes, task.input_format) if recipe.train.mixup else None

    @property
    def fixed_shapes(self) -> bool:
        """Every batch is resized to the recipe's S resolutions."""
        return True

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        """All resolutions forward; the loss of Eq. 9."""
        if self.mix is not None:
            batch = self.mix(batch)
        out, logits = mred_standard(self.model, self.criterion, self.task, batch_resolutions(batch, self.resolutions, self.task.input_format), batch)
        return self._output(out, logits, batch)

    def step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        if not self.multi_backward:
            return super().step(batch, ctx)
        if self.mix is not None:
            batch = self.mix(batch)
        images = batch_resolutions(batch, self.resolutions, self.task.input_format)
        out, logits = mred_low_memory(self.model, self.criterion, self.task, images, batch, ctx)
        return self._output(out, logits, batch)

    def _output(self, out: MREDOutput, logits: list[torch.Tensor], batch: dict[str, Any]) -> StepOutput:
        terms = {"loss": out.total, "cls": out.cls, "ens": out.ens, "dis": out.dis}
        log: dict[str, torch.Tensor | float] = {k: v.detach() for k, v in terms.items()}
        for r, z, ce in zip(self.resolutions, logits, out.cls_per_resolution):
            log[f"ce/{r}"] = ce.detach()
            log[f"acc/{r}"] = self.task.batch_accuracy(z, batch)
        return StepOutput(out.total, log)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The network with weight decay; alpha without (§3.3: it only learns the ensemble)."""
        return super().param_groups(weight_decay) + [{"params": [self.criterion.alpha], "weight_decay": 0.0}]

    def describe(self) -> dict[str, Any]:
        return self.ensemble_description()

    def progress_text(self, averages: dict[str, float]) -> str:
        """'loss 3.21 | 32: 1.10 45% | 24: ...': per-resolution CE and training accuracy."""
        parts = [f"loss {averages.get('loss', float('nan')):.3f}"]
        parts += [f"{r}: {averages.get(f'ce/{r}', 0):.2f} {averages.get(f'acc/{r}', 0):.0f}%" for r in self.resolutions]
        return " | ".join(parts)
