"""The task contract: the problem side of training (data, how logits meet labels, metrics).

A task turns a recipe into a model and data, says how the logits of one batch meet the
training loss, and measures predictions. How the sub-networks are trained together (MRED,
MutualNet) is the training method's business (:mod:`rsvision.training`); the loop is the
engine's (:mod:`rsvision.engine`). Neither knows the task's labels or metrics.

Batches are dicts. A training batch holds ``image`` (the crop at the largest resolution,
resized on the device, see :func:`~rsvision.data.transforms.batch_resolutions`) or
``images`` (a list of S tensors, largest first), and ``target``; an evaluation batch holds
``images`` (one tensor per evaluated resolution, all from one decode) and ``target`` (and
whatever the task's metrics need).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from rsvision.data.cache import InMemory, cache_choice, decoded_sample
from rsvision.data.sampling import mix_seed, split_off
from rsvision.data.transforms import InputFormat
from rsvision.data.workers import loader_workers
from rsvision.errors import UserError
from rsvision.models import build_model
from rsvision.models.pretrained import loaded_weights
from rsvision.nn.switchable import RSNet
from rsvision.recipe import Recipe, TaskFields, task_fields
from rsvision.registry import DATASETS


class Metrics:
    """Accumulates predictions of one sub-network; ``compute`` reduces across processes.

    The states live where the evaluation runs (:meth:`to`): the collectives of an NCCL
    process group reduce tensors on the GPU only, and every process, with or without an
    evaluated batch, takes part in them.
    """

    names: tuple[str, ...] = ()

    def to(self, device: torch.device | str) -> "Metrics":
        """Keep the states on ``device``: every torchmetrics metric (any ``nn.Module``) held as an attribute moves there."""
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(device)
        return self

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
    #: The task's own ``data`` fields and their defaults (a :class:`~rsvision.recipe.TaskFields`
    #: model): the recipe's ``data`` section takes them as extra keys, validated here.
    data_fields: type[TaskFields] = TaskFields
    #: The optional recipe fields this task reads: ``data.<name>`` of each of ``data_fields``.
    recipe_fields: frozenset[str] = frozenset()
    #: Whether the model computes its own losses (:meth:`subnet_losses`, e.g. a detector's):
    #: no logits to distil, so every sub-network learns from the ground truth.
    own_losses: bool = False
    #: The registered training method of this task's recipes without a width axis (None:
    #: :attr:`rsvision.recipe.Recipe.method`'s choice); tasks with ``own_losses`` name ``parallel``.
    training_method: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.recipe_fields = frozenset(f"data.{name}" for name in cls.data_fields.model_fields)

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.fields = task_fields(recipe, self.data_fields)
        self.resolutions = recipe.resolutions
        self.input_format = input_format_of(recipe)
        self._datasets: dict[str, Dataset] = {}
        #: What :meth:`build_model` loaded (``weights``, ``classifier``), for the run's metadata.
        self.pretrained: dict[str, Any] | None = None
        #: Split → why it is, or is not, decoded once (``data.cache``).
        self.cache_reasons: dict[str, str] = {}

    def build_model(self) -> RSNet:
        """The switchable network for this recipe (``model.num_classes`` from the data when unset)."""
        self.resolve_num_classes()
        model = build_model(self.recipe)
        self.pretrained = loaded_weights(model)
        return model

    def resolve_num_classes(self) -> int:
        """``model.num_classes``: the number of classes the training data names when the recipe
        leaves it out (written into the recipe, so the run records it); :meth:`check_classes`
        refuses a value the data contradicts."""
        m = self.recipe.model
        if m.num_classes is None:
            self.dataset("train")  # check_classes takes the count from it
        if m.num_classes is None:
            raise UserError(
                f"{self.recipe.source}: model.num_classes: dataset '{self.recipe.data.dataset}' does not name its classes; set model.num_classes"
            )
        return m.num_classes

    def dataset(self, split: str) -> Dataset:
        """The raw dataset of ``split``, built once, and decoded once when ``data.cache`` says so
        (:func:`~rsvision.data.cache.cache_choice`; the reason is kept in :attr:`cache_reasons`).

        Data naming more classes than the network predicts is refused here, before training.
        """
        if split not in self._datasets:
            d = self.recipe.data
            dataset = DATASETS.build(d.dataset, field="data.args", root=d.root, split="train" if d.val_split else split, **d.args)
            if d.val_split:
                dataset = split_off(dataset, split, d.val_split, self.recipe.train.seed)
            self.check_classes(dataset, split)
            cached, self.cache_reasons[split] = cache_choice(d.cache, dataset, self.decoded, self.recipe.train.epochs)
            self._datasets[split] = InMemory(dataset, self.decoded) if cached else dataset
        return self._datasets[split]

    def decoded(self, sample: Any) -> Any:
        """One raw sample as ``data.cache`` keeps it: PIL images as uint8 arrays."""
        return decoded_sample(sample)

    def check_classes(self, dataset: Dataset, split: str) -> None:
        """The network predicts the data's classes: unset, ``model.num_classes`` becomes their
        number; set, the training data must have exactly that many (a mismatch either way would
        train outputs no label reaches or labels no output can predict), and other splits at most
        that many (a trained network may be scored on a subset of its classes)."""
        classes = getattr(dataset, "classes", None)
        m = self.recipe.model
        if classes is None:
            return
        if m.num_classes is None:
            m.num_classes = len(classes)
        elif len(classes) > m.num_classes or (split == "train" and len(classes) != m.num_classes):
            raise UserError(
                f"{self.recipe.source}: model.num_classes is {m.num_classes} but the {split} data of "
                f"'{self.recipe.data.dataset}' has {len(classes)} classes (leave model.num_classes out to take it from the data)"
            )

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def eval_dataset(self, resolutions: Sequence[int], split: str = "val") -> Dataset:
        """Samples ``{"images": [one per resolution], "target": ...}`` of ``split``, decoded once each."""
        raise NotImplementedError

    def calibration_loader(
        self, resolutions: Sequence[int], images: int, batch_size: int | None = None, seed: int = 0, device: torch.device | str = "cpu"
    ) -> DataLoader:
        """The first ``images`` of a seeded shuffle of the training split in the evaluation view
        (what post-hoc BN statistics are measured on, :func:`rsvision.nn.bn_stats.calibrate`),
        loaded by the processes :func:`~rsvision.data.workers.loader_workers` allows on ``device``."""
        data = self.eval_dataset(resolutions, split="train")
        if len(data) == 0:
            raise UserError(f"{self.recipe.source}: the training split of '{self.recipe.data.dataset}' is empty; nothing to calibrate on")
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(mix_seed(seed, len(data))))
        d = self.recipe.data
        return DataLoader(
            Subset(data, order[: min(images, len(data))].tolist()),
            batch_size=batch_size or d.eval_batch_size or d.batch_size,
            num_workers=loader_workers(d.workers, device, d.oversubscribe)[0],
            collate_fn=self.eval_collate,
        )

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return torch.utils.data.default_collate(samples)

    def eval_collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return torch.utils.data.default_collate(samples)

    def loss_logits(self, logits: Sequence[torch.Tensor], batch: dict[str, Any]) -> list[torch.Tensor]:
        """Bring the logits to the shape the loss compares with the target (classification: as they are).

        Treat each logit on its own: training methods may call this with one at a time.
        """
        return list(logits)

    def subnet_losses(self, model: RSNet, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The named loss terms of the pinned sub-network on ``batch`` (tasks whose model computes
        its own losses, e.g. a detector; see ``own_losses``)."""
        raise NotImplementedError(f"task {type(self).__name__} trains through logits (loss_logits), not subnet_losses")

    def eval_logits(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Bring one sub-network's logits to what the metrics compare with the target."""
        return logits

    def batch_accuracy(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Training accuracy in % of ``loss_logits`` output (per element, ignoring ``ignore_index``),
        a 0-d tensor on the logits' device: the engine reads it with the step's other numbers."""
        target = batch["target"]
        correct = logits.detach().argmax(1) == target
        if self.ignore_index is None:
            return 100.0 * correct.float().mean()
        valid = target != self.ignore_index
        return 100.0 * (correct & valid).sum() / valid.sum().clamp_min(1)

    def metrics(self) -> Metrics:
        raise NotImplementedError

    @cached_property
    def classes(self) -> list[str]:
        """Class names, from the validation data when it names them."""
        classes = getattr(self.dataset("val"), "classes", None)
        return [str(c) for c in classes] if classes else [str(i) for i in range(self.recipe.model.num_classes)]

    def class_names(self) -> list[str]:
        return list(self.classes)

    def example_input(self, resolution: int) -> torch.Tensor:
        return torch.zeros(1, self.input_format.channels, resolution, resolution)

    def describe(self) -> dict[str, Any]:
        """Extra metadata stored in the run's ``rsvision.json``: the starting weights loaded, if any."""
        return {"pretrained": self.pretrained} if self.pretrained else {}


def input_format_of(recipe: Recipe) -> InputFormat:
    d = recipe.data
    if not d.normalize:
        return InputFormat(recipe.model.in_channels, None, None)
    return InputFormat(recipe.model.in_channels, tuple(d.mean), tuple(d.std))
