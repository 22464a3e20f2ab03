"""The training-method contract: how the sub-networks of one switchable network learn together.

A training method is an ``nn.Module`` that owns the network and its criterion (and any
learned state of its own, e.g. MRED's ensemble scores alpha), and turns a batch into a
loss and what to log. The engine only prepares it, accumulates, calls backward, steps the
optimiser, evaluates and saves (see docs/architecture.md):

- a *single-backward* method computes its loss in ``forward(batch)``; the engine calls the
  prepared (possibly data-parallel) module and backward on the result;
- a *multi-backward* method (``multi_backward = True``) runs several forward/backward
  passes in ``step(batch, ctx)`` on the unwrapped module (one sub-network's activations
  at a time); the engine then averages the gradients over processes once per update.

Around evaluation the engine enters ``evaluation(subnets)`` (e.g. recompute BN statistics
of sub-networks that have none of their own, then drop them), and after the last epoch
the main process calls ``after_training(run_dir, quiet)``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
from torch import nn

from rsvision.nn.switchable import RSNet
from rsvision.recipe import Recipe
from rsvision.subnet import SubNet
from rsvision.tasks.base import Task


@dataclass
class StepOutput:
    """One micro-batch: the loss (checked for finiteness) and the scalars averaged over the epoch.

    Logged values computed on the device stay there as detached 0-d tensors: reading one
    (``float()``) makes the host wait for the device, so the engine sums them on the device
    and reads them all at once every few steps. Host numbers (e.g. a loss weight) stay floats.
    """

    loss: torch.Tensor
    log: dict[str, torch.Tensor | float] = field(default_factory=dict)


@dataclass
class StepContext:
    """What the engine lends a multi-backward step: its backward (loss scaling for accumulation,
    mixed precision) and the autocast context of the run's precision."""

    backward: Callable[[torch.Tensor], None]
    autocast: Callable[[], ContextManager]


class TrainingMethod(nn.Module):
    """Base class: ``model`` is the switchable network, ``task`` the problem it is trained on."""

    #: Whether ``step`` runs several backward passes (see the module docstring).
    multi_backward: bool = False
    #: Optional recipe fields this method reads (refused for the others, ``rsvision.recipe.check_unused``).
    recipe_fields: frozenset[str] = frozenset()

    @property
    def leaves_unused_parameters(self) -> bool:
        """Whether the loss of one ``forward`` can leave parameters without a gradient (e.g.
        the BN groups of sub-networks a step did not draw). Data parallelism must then look
        for them after every backward (DDP's ``find_unused_parameters``, a walk over the
        graph), or it waits for their gradients and stops at the next step. Default: no."""
        return False

    @property
    def fixed_shapes(self) -> bool:
        """Whether the training steps' layers see one fixed, small set of input shapes, so that
        cuDNN's autotuning (``cudnn.benchmark``: time every algorithm once per new shape, keep
        the fastest) pays for itself. Default: no (a method that does not say)."""
        return False

    def __init__(self, model: RSNet, task: Task, recipe: Recipe) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.recipe = recipe

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        raise NotImplementedError

    def step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        """Forward and backward of one micro-batch."""
        out = self(batch)
        ctx.backward(out.loss)
        return out

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: the network with weight decay (methods add their own)."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def eval_subnets(self) -> list[SubNet]:
        """The sub-networks validated after each epoch and reported in the results table."""
        return list(self.model.subnets)

    def uncalibrated(self, subnets: Sequence[SubNet]) -> list[SubNet]:
        """Those of ``subnets`` whose BN statistics must be recomputed before they are evaluated
        (they have none of their own: post-hoc BN). Default: none."""
        return []

    @contextmanager
    def evaluation(self, subnets: Sequence[SubNet]) -> Iterator[None]:
        """Prepare the network to evaluate ``subnets`` during training and undo it afterwards,
        so the saved state stays the trained one. Default: nothing to do."""
        yield

    def combiners(self) -> dict[str, Callable[[list[torch.Tensor]], torch.Tensor]]:
        """Extra evaluation rows computed from the outputs of ``eval_subnets`` (e.g. an ensemble)."""
        return {}

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add method-specific columns to the evaluation rows (e.g. each resolution's ensemble weight)."""
        return rows

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors besides the network's state, saved with the weights under these keys."""
        return {}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`artifact_tensors` saved (missing keys keep their initial values)."""

    def describe(self) -> dict[str, Any]:
        """Metadata stored in ``rsvision.json`` and logged each epoch."""
        return {}

    #: Method columns of the results table (row key → format), e.g. MRED's ``alpha``.
    columns: dict[str, str] = {}

    def epoch_text(self, log: dict[str, Any]) -> str:
        """The method's part of the line printed after each epoch (from ``describe``'s keys in ``log``)."""
        return ""

    def progress_text(self, averages: dict[str, float]) -> str:
        """The progress bar's text from the epoch's running averages of ``StepOutput.log``."""
        return f"loss {averages.get('loss', float('nan')):.3f}"


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

