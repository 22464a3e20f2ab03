"""The task contract: what the engine asks of a task plugin.

A task turns a recipe into a model and data, says how the S logits of one batch meet
the MRED loss, and measures predictions. The engine (``rsvision.engine``) runs the same
loop for every task.

Batches are dicts. A training batch holds ``images`` (a list of S tensors, largest
resolution first, all resized from one crop) and ``target``; an evaluation batch holds
``image`` and ``target`` (and whatever the task's metrics need).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from rsvision.recipe import Recipe
from rsvision.switchable import RSNet


class Metrics:
    """Accumulates predictions of one resolution; ``compute`` reduces across processes."""

    names: tuple[str, ...] = ()

    def update(self, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


class Task:
    """Base class of task plugins (register subclasses with ``@register_task``)."""

    #: Label excluded from losses and metrics (segmentation's void label).
    ignore_index: int | None = None
    #: The metric that ranks runs and heads the results table.
    primary_metric: str = ""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.resolutions = recipe.resolutions

    def build_model(self) -> RSNet:
        """The resolution-switchable network for this recipe."""
        from rsvision.models import build_model

        return build_model(self.recipe)

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def eval_dataset(self, resolution: int) -> Dataset:
        raise NotImplementedError

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return torch.utils.data.default_collate(samples)

    def eval_collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return torch.utils.data.default_collate(samples)

    def loss_logits(self, logits: Sequence[torch.Tensor], batch: dict[str, Any]) -> list[torch.Tensor]:
        """Bring the logits to one shape for the MRED loss (classification: as they are).

        Treat each logit on its own: the low-memory step (``train.memory: low``) calls this
        with one resolution's logits at a time.
        """
        return list(logits)

    def eval_logits(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Bring one resolution's logits to what the metrics compare with the target."""
        return logits

    def metrics(self) -> Metrics:
        raise NotImplementedError

    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.recipe.model.num_classes)]

    def example_input(self, resolution: int) -> torch.Tensor:
        return torch.zeros(1, 3, resolution, resolution)

    def describe(self) -> dict[str, Any]:
        """Extra metadata stored in the run's ``rsvision.json``."""
        return {}


def criterion_for(task: Task) -> nn.Module:
    from rsvision.mred import MREDLoss

    return MREDLoss(len(task.resolutions), mode=task.recipe.mred.mode, ignore_index=task.ignore_index)
