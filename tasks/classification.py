"""Image classification (RS-Nets §4): top-1/top-5 accuracy per sub-network."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassAccuracy

from rsvision.data.mapped import MappedDataset
from rsvision.data.transforms import EvalTransform, MultiResolutionTransform
from rsvision.registry import register_task
from rsvision.task import Metrics, Task


class ClassificationMetrics(Metrics):
    """Top-1 and top-5 accuracy in percent (top-k capped at the number of classes)."""

    names = ("top1", "top5")

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(device)

    def update(self, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        self.top1.to(logits.device).update(logits, batch["target"])
        self.top5.to(logits.device).update(logits, batch["target"])

    def compute(self) -> dict[str, float]:
        return {"top1": 100 * float(self.top1.compute()), "top5": 100 * float(self.top5.compute())}


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


@register_task("cls")
class ClassificationTask(Task):
    primary_metric = "top1"
    recipe_fields = frozenset({"data.crop_scale", "data.crop_ratio", "data.multi_crop"})

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
