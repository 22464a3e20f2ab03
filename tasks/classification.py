"""Image classification (RS-Nets §4): top-1/top-5 per resolution and of the alpha-ensemble."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassAccuracy

from rsvision.data.mapped import MappedDataset
from rsvision.data.transforms import MultiResolutionTransform, eval_transform
from rsvision.registry import DATASETS, register_task
from rsvision.task import Metrics, Task


class ClassificationMetrics(Metrics):
    """Top-1 and top-5 accuracy in percent (top-k capped at the number of classes)."""

    names = ("top1", "top5")

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(device)

    def update(self, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        self.top1.update(logits, batch["target"])
        self.top5.update(logits, batch["target"])

    def compute(self) -> dict[str, float]:
        return {"top1": 100 * float(self.top1.compute()), "top5": 100 * float(self.top5.compute())}


@register_task("cls")
class ClassificationTask(Task):
    primary_metric = "top1"

    def _dataset(self, split: str) -> Dataset:
        d = self.recipe.data
        return DATASETS.build(d.dataset, root=d.root, split=split, **d.args)

    def train_dataset(self) -> Dataset:
        d = self.recipe.data
        transform = MultiResolutionTransform(self.resolutions, d.crop_scale, d.crop_ratio, d.multi_crop, d.normalize)
        return MappedDataset(self._dataset("train"), lambda img, y: {"images": transform(img), "target": y})

    def eval_dataset(self, resolution: int) -> Dataset:
        transform = eval_transform(resolution, self.recipe.data.normalize)
        return MappedDataset(self._dataset("val"), lambda img, y: {"image": transform(img), "target": y})

    def metrics(self) -> Metrics:
        return ClassificationMetrics(self.recipe.model.num_classes)

    def class_names(self) -> list[str]:
        classes = getattr(self._dataset("val"), "classes", None)
        return list(classes) if classes else super().class_names()
