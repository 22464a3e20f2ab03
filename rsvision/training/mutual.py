"""MutualNet training: one network learns every width of a range and every resolution of a set.

Each step follows the sandwich rule (MutualNet §3.1-3.2, Fig. 2):

- the full width at the largest resolution learns from the labels,
  ``loss_full = CE(N(W_{0:1}, I_{R=r_max}), y)`` (Eq. 2);
- the smallest width and ``sample - 2`` random widths, each at a resolution drawn from the
  set (the largest included), learn by in-place distillation from the full network's
  detached prediction, ``loss_sub_i = KL(p_full || p_i)`` (Eq. 3);
- ``loss = loss_full + sum_i loss_sub_i`` (Eq. 4), one optimiser step (the engine's).

Beyond the paper, the students' loss can be scheduled: ``widths.students: labels`` trains
them on the labels (``CE(N(W_{0:w_i}, I_{R=r_i}), y)``), and ``widths.student_ramp_epochs``
weighs their sum by ``lambda`` rising linearly from 0 to 1, ``loss = loss_full + lambda *
sum_i loss_sub_i``. ``lambda`` is a function of the draw counter below, so a resumed run
weighs every step as an uninterrupted one.

A task whose model computes its own losses (``Task.own_losses``: detection) trains every
sub-network of the sandwich on the ground truth, as MutualNet §4.3 trains its detectors:
``loss = sum(L_full) + lambda * sum_i sum(L_i)``, the task's loss terms of each
(``widths.students: labels``; there are no logits to distil).

``widths.teacher: ensemble`` combines it with RS-Nets: the full width runs every resolution
with MRED (L_cls + L_ens + L_dis, ``mred.mode``) and the sub-networks distil from the
alpha-ensemble z_0 instead.

The draws of a step come from a generator seeded by (seed, draw counter); the counter is
a buffer of this module, so every process draws the same sub-networks, and a resumed run
(whose state holds the counter) continues the sequence. ``train.memory: low`` runs forward
and backward of one sub-network at a time (the teacher's logits are detached, so the
gradients are the standard step's).

With ``widths.bn: posthoc`` the BN is shared in training and its running statistics mix
all sub-networks; before each validation the evaluated sub-networks get statistics of
their own, recomputed on ``widths.calibration_images`` training images and dropped
afterwards (:meth:`MutualTraining.evaluation`), in the evaluation view or, with
``widths.calibration_view: train``, in the training augmentation (the official code's
ComputePostBN).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from functools import cached_property
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from rsvision.data.sampling import EpochSeeded, mix_seed
from rsvision.errors import UserError
from rsvision.data.transforms import InputFormat, batch_resolutions
from rsvision.nn.bn_stats import calibrated_for
from rsvision.nn.slimmable import slimmable_layers
from rsvision.nn.switchable import RSNet, at_subnet, subnet_status
from rsvision.recipe import Recipe, WidthsConfig
from rsvision.registry import register_method
from rsvision.subnet import SubNet
from rsvision.tasks.base import Task
from rsvision.training.base import StepContext, StepOutput, TrainingMethod
from rsvision.training.ensemble import AlphaEnsemble
from rsvision.training.loss import MREDLoss, kl_divergence
from rsvision.training.rsnets import mred_low_memory, mred_standard

#: Separate the sandwich draws' and the training-view calibration's random streams from others seeded by the run's seed.
_STREAM = 0x5A4D
_CALIBRATION_STREAM = 0x5A4E


def sandwich(widths: WidthsConfig, resolutions: Sequence[int], seed: int, draw: int) -> list[SubNet]:
    """The sub-networks of draw number ``draw``: ``[full @ largest, smallest @ r, random_k @ r_k ...]``.

    ``widths.sample`` in all. Random widths are uniform in the range, or picked from the
    list's widths strictly between its ends (from the whole list when it has none); each
    student's resolution is uniform over ``resolutions``. A function of
    (seed, draw) only, so every process draws the same.
    """
    g = torch.Generator().manual_seed(mix_seed(seed, _STREAM, draw))
    res = sorted(resolutions, reverse=True)
    low, high = widths.bounds

    def resolution() -> int:
        return res[int(torch.randint(len(res), (), generator=g))]

    def width() -> float:
        if widths.list is None:
            return low + (high - low) * float(torch.rand((), generator=g))
        inner = [w for w in widths.list if low < w < high] or list(widths.list)
        return inner[int(torch.randint(len(inner), (), generator=g))]

    draws = [SubNet(res[0], high), SubNet(resolution(), low)]
    for _ in range(widths.sample - 2):
        w = width()
        draws.append(SubNet(resolution(), w))
    return draws


@register_method("mutualnet")
class MutualTraining(AlphaEnsemble, TrainingMethod):
    """The sandwich rule with in-place distillation over widths and resolutions (module docstring)."""

    #: ``mred.mode`` is read with ``widths.teacher: ensemble`` only (``recipe.check_unused``).
    recipe_fields = frozenset({"mred.mode", "train.label_smoothing"})

    def __init__(self, model: RSNet, task: Task, recipe: Recipe) -> None:
        super().__init__(model, task, recipe)
        if recipe.widths is None:
            raise ValueError("MutualTraining needs a recipe with a widths section")
        self.widths = recipe.widths
        self.resolutions = list(recipe.resolutions)
        self.multi_backward = recipe.train.memory == "low"
        self.criterion = None
        if self.widths.teacher == "ensemble":
            self.criterion = MREDLoss(
                len(self.resolutions), mode=recipe.mred.mode, ignore_index=task.ignore_index, label_smoothing=recipe.train.label_smoothing
            )
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        if task.own_losses and recipe.train.label_smoothing:
            raise UserError(f"{recipe.source}: train.label_smoothing: the '{recipe.task}' task computes its own losses; remove it")
        if task.own_losses and (self.widths.students != "labels" or self.widths.teacher != "largest"):
            raise UserError(
                f"{recipe.source}: widths: the '{recipe.task}' task trains every sub-network on the ground truth "
                "(MutualNet §4.3); set students: labels and teacher: largest"
            )

    @property
    def leaves_unused_parameters(self) -> bool:
        """With private BN each step trains only the drawn sub-networks' BN groups."""
        return self.widths.bn == "private"

    @property
    def fixed_shapes(self) -> bool:
        """A width list has finitely many channel counts, a range a new one at every random
        width; a detector's images keep their own sizes."""
        return self.widths.list is not None and not self.task.own_losses

    def next_draw(self) -> tuple[int, list[SubNet]]:
        """This step's draw number and sub-networks; advances the draw counter (a buffer, so
        that the state holds it: reading it is the step's one wait for the device)."""
        draw = int(self.draws)
        self.draws += 1
        return draw, sandwich(self.widths, self.resolutions, self.recipe.train.seed, draw)

    def student_weight(self, draw: int) -> float:
        """``lambda`` of sandwich step ``draw`` (0-based): ``min(1, draw / R)``, R the steps of
        ``widths.student_ramp_epochs`` epochs; 1 without a ramp (Eq. 4)."""
        if self.widths.student_ramp_epochs == 0:
            return 1.0
        return min(1.0, draw / (self.widths.student_ramp_epochs * self.steps_per_epoch))

    @cached_property
    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch and process, as the engine runs them: the full batches of
        the training set, shared out among the processes, at most ``train.max_steps_per_epoch``."""
        batches = len(self.task.train_dataset()) // self.recipe.data.batch_size
        processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        steps = math.ceil(batches / processes)
        return max(1, min(steps, self.recipe.train.max_steps_per_epoch or steps))

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        """Every sub-network of the step forward; the loss of Eq. 4 as one graph."""
        return self._sandwich(batch, None)

    def step(self, batch: dict[str, Any], ctx: StepContext) -> StepOutput:
        if not self.multi_backward:
            return super().step(batch, ctx)
        return self._sandwich(batch, ctx)

    def _sandwich(self, batch: dict[str, Any], ctx: StepContext | None) -> StepOutput:
        """One step; with ``ctx`` each term is backwarded as soon as it is known (low memory)."""
        number, draw = self.next_draw()
        weight = self.student_weight(number)
        if self.task.own_losses:
            return self._ground_truth_sandwich(batch, ctx, draw, weight)
        target = batch["target"]
        autocast: Callable[[], ContextManager] = ctx.autocast if ctx is not None else nullcontext
        inputs: dict[int, torch.Tensor] = {}

        def at(r: int) -> torch.Tensor:
            if r not in inputs:
                inputs[r] = batch_resolutions(batch, [r], self.task.input_format)[0]
            return inputs[r]

        log: dict[str, torch.Tensor | float] = {}
        if self.criterion is None:
            with autocast():
                z_full = self._logits(draw[0], at(draw[0].resolution), batch)
            loss_full = self._cross_entropy(z_full, target)
            if ctx is not None:
                ctx.backward(loss_full)
                loss_full = loss_full.detach()
            teacher = z_full.detach().float()
            log["ce"] = loss_full.detach()
        else:
            images = [at(r) for r in self.resolutions]
            if ctx is None:
                out, logits = mred_standard(self.model, self.criterion, self.task, images, batch)
            else:
                out, logits = mred_low_memory(self.model, self.criterion, self.task, images, batch, ctx)
            loss_full, z_full, teacher = out.total, logits[0], out.ensemble_logits
            log |= {"cls": out.cls.detach(), "ens": out.ens.detach(), "dis": out.dis.detach()}
        log["acc/full"] = self.task.batch_accuracy(z_full.detach(), batch)
        mask = None if self.task.ignore_index is None else target != self.task.ignore_index
        terms = []
        for subnet in draw[1:]:
            with autocast():
                z = self._logits(subnet, at(subnet.resolution), batch)
            if self.widths.students == "distill":
                term = kl_divergence(teacher, z, mask)  # Eq. 3: the teacher enters detached
            else:
                term = self._cross_entropy(z, target)
            if ctx is not None:
                ctx.backward(weight * term)
                term = term.detach()
            terms.append(term)
        loss_sub = torch.stack(terms).sum()
        log["students"] = loss_sub.detach()
        log["students/smallest"] = terms[0].detach()
        log["students/weight"] = weight
        total = loss_full + weight * loss_sub
        log["loss"] = total.detach()
        return StepOutput(total, log)

    def _ground_truth_sandwich(self, batch: dict[str, Any], ctx: StepContext | None, draw: list[SubNet], weight: float) -> StepOutput:
        """Every drawn sub-network on the task's own losses (module docstring); with ``ctx``
        each is backwarded as soon as it is known."""
        autocast: Callable[[], ContextManager] = ctx.autocast if ctx is not None else nullcontext
        terms = []
        for i, subnet in enumerate(draw):
            with autocast(), at_subnet(self.model, subnet):
                term = sum(self.task.subnet_losses(self.model, batch).values())
            if ctx is not None:
                ctx.backward(term if i == 0 else weight * term)
                term = term.detach()
            terms.append(term)
        loss_sub = torch.stack(terms[1:]).sum()
        total = terms[0] + weight * loss_sub
        log = {"full": terms[0].detach(), "students": loss_sub.detach(), "students/smallest": terms[1].detach(),
               "students/weight": weight, "loss": total.detach()}  # fmt: skip
        return StepOutput(total, log)

    def _logits(self, subnet: SubNet, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        with at_subnet(self.model, subnet):
            return self.task.loss_logits([self.model(x)], batch)[0]

    def _cross_entropy(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A label term (the teacher's Eq. 2, or a student's with ``students: labels``), with
        ``train.label_smoothing``."""
        kwargs = {} if self.task.ignore_index is None else {"ignore_index": self.task.ignore_index}
        return F.cross_entropy(z.float(), target, label_smoothing=self.recipe.train.label_smoothing, **kwargs)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """``widths.decay``: ``all`` the network's parameters decayed, or ``conv_fc``: only the
        weights of convolutions and linear layers that are not depthwise (MutualNet's code).
        The ensemble scores alpha are never decayed."""
        groups = super().param_groups(weight_decay)
        if self.widths.decay == "conv_fc":
            decayed = {id(m.weight) for m in self.model.modules() if _decayed_layer(m)}
            params = [p for p in self.model.parameters() if p.requires_grad]
            groups = [
                {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
                {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
            ]
        if self.criterion is not None:
            groups.append({"params": [self.criterion.alpha], "weight_decay": 0.0})
        return groups

    def eval_subnets(self) -> list[SubNet]:
        """The trained sub-networks: a range's two ends or the list, at every resolution (widest first)."""
        return list(self.model.subnets)

    def uncalibrated(self, subnets: Sequence[SubNet]) -> list[SubNet]:
        """With post-hoc BN: the sub-networks whose statistics are still the shared, mixed ones."""
        if self.widths.bn != "posthoc":
            return []
        return [s for s in subnets if subnet_status(self.model, s) == "shared"]

    @property
    def calibration_task(self) -> Any:
        """What calibration reads its images from (``widths.calibration_view``): the task (its
        evaluation view of the training split) or :class:`TrainingView`."""
        return TrainingView(self.task) if self.widths.calibration_view == "train" else self.task

    @contextmanager
    def evaluation(self, subnets: Sequence[SubNet]) -> Iterator[None]:
        """Post-hoc BN: statistics of the evaluated sub-networks recomputed on
        ``widths.calibration_images`` training images for this evaluation only."""
        needed = self.uncalibrated(subnets)
        if not needed:
            yield
            return

        with calibrated_for(self.model, self.calibration_task, needed, self.widths.calibration_images, self.recipe.train.seed):
            yield

    def weighs(self, row: dict[str, Any]) -> bool:
        """With the ensemble teacher, alpha weighs the full width's resolutions (the first S
        evaluated sub-networks)."""
        return row.get("width") == self.widths.bounds[1]

    def describe(self) -> dict[str, Any]:
        """The width axis as trained, for ``rsvision.json``: widths, channel rule, the layers kept
        full, dropout, BN and where its statistics come from, teacher, students and their weight."""
        w = self.widths
        names = {id(m): name for name, m in self.model.named_modules()}
        full = [names[id(m)] for m in slimmable_layers(self.model) if m.full_outputs]
        dropout = {names[id(m)]: m.p for m in self.model.modules() if isinstance(m, nn.Dropout) and m.p > 0}
        info: dict[str, Any] = {
            "widths": {
                **({"range": list(w.range)} if w.range is not None else {"list": list(w.list)}),
                "divisor": w.divisor,
                "channels": f"first make_divisible(w*C, {w.divisor}) channels of every layer (nearest multiple of {w.divisor}, at least {w.divisor}, never below 90% of w*C, at most C); the first convolution's inputs and the outputs of {', '.join(full)} stay full",
                "full_outputs": full,
                "dropout": dropout,
                "bn": w.bn,
                **({"calibration_view": w.calibration_view} if w.bn == "posthoc" else {}),
                "teacher": w.teacher,
                "students": w.students,
                "student_ramp_epochs": w.student_ramp_epochs,
                "sample": w.sample,
                "draws": int(self.draws),
            }
        }
        return info | self.ensemble_description()

    def progress_text(self, averages: dict[str, float]) -> str:
        """'loss 1.92 | full: ce 1.41 48% | students: kd 0.51 (smallest 0.22) x 1.00'."""
        full = averages.get("ce", averages.get("cls", averages.get("full", float("nan"))))
        kind = "kd" if self.widths.students == "distill" else "loss" if self.task.own_losses else "ce"
        accuracy = "" if self.task.own_losses else f" {averages.get('acc/full', 0):.0f}%"
        return (
            f"loss {averages.get('loss', float('nan')):.3f} | full: {'loss' if self.task.own_losses else 'ce'} {full:.2f}{accuracy} | "
            f"students: {kind} {averages.get('students', 0):.3f} (smallest {averages.get('students/smallest', 0):.3f}) x {averages.get('students/weight', 1):.2f}"
        )


class TrainingView:
    """The task's training split in its training augmentation, for post-hoc BN statistics
    (``widths.calibration_view: train``; the official code's ComputePostBN).

    It offers what :func:`rsvision.nn.bn_stats.calibrate` reads of a task:
    ``calibration_loader`` (the task's, over this view's ``eval_dataset`` and ``eval_collate``). Each image is one training
    crop, resized to every resolution as the training step resizes a batch, with its
    augmentation seeded by (``train.seed``, index).
    """

    def __init__(self, task: Task) -> None:
        self.task, self.recipe = task, task.recipe

    def eval_dataset(self, resolutions: Sequence[int], split: str = "train") -> Dataset:
        if split != "train":
            raise ValueError(f"the training view has the training split only, not '{split}'")
        train = EpochSeeded(self.task.train_dataset(), mix_seed(self.recipe.train.seed, _CALIBRATION_STREAM))
        return _Resized(train, sorted(resolutions, reverse=True), self.task.input_format)

    def eval_collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return torch.utils.data.default_collate(samples)

    calibration_loader = Task.calibration_loader


class _Resized(Dataset):
    """``{"images": [the sample's largest crop at every resolution]}`` of a training dataset."""

    def __init__(self, dataset: Dataset, resolutions: list[int], input_format: InputFormat) -> None:
        self.dataset, self.resolutions, self.input_format = dataset, resolutions, input_format

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        crop = sample["image"] if "image" in sample else sample["images"][0]
        return {"images": [x[0] for x in batch_resolutions({"image": crop[None]}, self.resolutions, self.input_format)]}


def _decayed_layer(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and not (m.groups > 1 and m.groups == m.in_channels == m.out_channels)
