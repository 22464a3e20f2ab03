"""Image classification (RS-Nets §4): top-1/top-5 accuracy per sub-network."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from pydantic import field_validator
from rsvision.tasks.base import Metrics, Task
from torch.utils.data import Dataset

from rsvision.data.mapped import MappedDataset
from rsvision.data.transforms import EvalTransform, MultiResolutionTransform
from rsvision.errors import UserError
from rsvision.recipe import Recipe, TaskFields, ordered_pair
from rsvision.registry import register_task


class ClassificationMetrics(Metrics):
    """Top-1 and top-5 accuracy in percent (top-k capped at the number of classes).

    A prediction counts for top-k when its label is among its k largest logits. Three counts
    (top-1 hits, top-k hits, samples) live where the evaluation runs (:meth:`to`) and are
    summed over the processes of a group in :meth:`compute`. Counting needs no metrics
    library: importing torchmetrics (it loads scipy) took 2.7 s on a 2-core CPU, more than
    a small run's evaluation.
    """

    names = ("top1", "top5")

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.k = min(5, num_classes)
        self.counts = torch.zeros(3, dtype=torch.long, device=device)

    def to(self, device: torch.device | str) -> "ClassificationMetrics":
        self.counts = self.counts.to(device)
        return self

    def update(self, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        target = batch["target"].to(self.counts.device)
        hits = logits.to(self.counts.device).topk(self.k, dim=1).indices == target[:, None]
        self.counts += torch.stack([hits[:, 0].sum(), hits.any(1).sum(), torch.tensor(len(target), device=hits.device)])

    def compute(self) -> dict[str, float]:
        counts = self.counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        top1, topk, samples = counts.tolist()
        return {"top1": 100 * top1 / max(samples, 1), "top5": 100 * topk / max(samples, 1)}


class LabelledImage:
    """``(image, label)`` → ``{**transform(image), "target": label}`` (picklable for any start method)."""

    def __init__(self, transform: Callable[[Any], dict[str, Any]]) -> None:
        self.transform = transform

    def __call__(self, image: Any, label: int) -> dict[str, Any]:
        return {**self.transform(image), "target": label}

    @property
    def many(self) -> Callable[[Sequence[tuple[Any, int]]], list[dict[str, Any]]] | None:
        """Maps several samples at once when the transform can (:meth:`EvalTransform.many`)."""
        return self._many if hasattr(self.transform, "many") else None

    def _many(self, samples: Sequence[tuple[Any, int]]) -> list[dict[str, Any]]:
        images, labels = zip(*samples)
        return [{**out, "target": label} for out, label in zip(self.transform.many(images), labels)]


class ClassificationFields(TaskFields):
    """The classification task's ``data`` fields: the random-resized crop of training (§4.1)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    #: A crop and a flip per resolution (the Table 6 ablation; needs ``resize: sample``).
    multi_crop: bool = False

    _ordered = field_validator("crop_scale", "crop_ratio")(ordered_pair)


@register_task("cls")
class ClassificationTask(Task):
    primary_metric = "top1"
    data_fields = ClassificationFields

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe)
        d = recipe.data
        if self.fields.multi_crop and d.resize == "batch":
            if "resize" in d.model_fields_set:
                raise UserError(f"{recipe.source}: data: multi_crop draws a crop per resolution, so it needs resize: sample")
            d.resize = "sample"

    def decoded(self, sample: tuple[Any, int]) -> tuple[torch.Tensor, int]:
        """``(image, label)`` with the image in the network's input format (a uint8 tensor of
        ``model.in_channels``), so a cached image is not converted again at every read."""
        image, label = sample
        return self.input_format.image(image), label

    def train_dataset(self) -> Dataset:
        d = self.recipe.data
        transform = MultiResolutionTransform(
            self.resolutions, d.crop_scale, d.crop_ratio, d.multi_crop, self.input_format, per_sample=d.resize == "sample"
        )
        return MappedDataset(self.dataset("train"), LabelledImage(transform))

    def eval_dataset(self, resolutions: Sequence[int], split: str = "val") -> Dataset:
        return MappedDataset(self.dataset(split), LabelledImage(EvalTransform(resolutions, self.input_format)))

    def metrics(self) -> Metrics:
        return ClassificationMetrics(self.recipe.model.num_classes)
