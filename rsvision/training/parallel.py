"""Parallel training on the ground truth: every sub-network of every batch, L = sum_s L_s.

The task computes each sub-network's loss itself (:meth:`rsvision.tasks.Task.subnet_losses`,
e.g. a detector's RPN, box and mask losses); there is no ensemble and no distillation,
as MutualNet §4.3 trains its detectors. ``train.memory: low`` runs forward and backward of
one sub-network at a time (the gradients are the same: the terms share no graph).
"""

from __future__ import annotations

from typing import Any

import torch

from rsvision.nn.switchable import RSNet, at_subnet
from rsvision.recipe import Recipe
from rsvision.registry import register_method
from rsvision.subnet import SubNet
from rsvision.tasks.base import Task
from rsvision.training.base import StepContext, StepOutput, TrainingMethod


@register_method("parallel")
class ParallelTraining(TrainingMethod):
    """The summed task losses of all trained sub-networks (largest first)."""

    def __init__(self, model: RSNet, task: Task, recipe: Recipe) -> None:
        super().__init__(model, task, recipe)
        self.subnets: list[SubNet] = list(model.subnets)
        self.multi_backward = recipe.train.memory == "low"

    def _losses(self, subnet: SubNet, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with at_subnet(self.model, subnet):
            return self.task.subnet_losses(self.model, batch)

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        terms = [self._losses(s, batch) for s in self.subnets]
        return self._output(sum(sum(t.values()) for t in terms), terms)

    def step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        if not self.multi_backward:
            return super().step(batch, ctx)
        terms = []
        for s in self.subnets:
            with ctx.autocast():
                losses = self._losses(s, batch)
            ctx.backward(sum(losses.values()))
            terms.append({k: v.detach() for k, v in losses.items()})
        return self._output(sum(sum(t.values()) for t in terms), terms)

    def _output(self, total: torch.Tensor, terms: list[dict[str, torch.Tensor]]) -> StepOutput:
        log: dict[str, torch.Tensor | float] = {"loss": total.detach()}
        for s, losses in zip(self.subnets, terms):
            log[f"loss/{s.id}"] = sum(v.detach() for v in losses.values())
            for name, value in losses.items():
                log[f"{name}/{s.id}"] = value.detach()
        return StepOutput(total, log)

    def progress_text(self, averages: dict[str, float]) -> str:
        """'loss 3.21 | 128: 1.10 | 96: ...': each sub-network's summed loss."""
        parts = [f"loss {averages.get('loss', float('nan')):.3f}"]
        parts += [f"{s.id}: {averages.get(f'loss/{s.id}', 0):.2f}" for s in self.subnets]
        return " | ".join(parts)
