"""Image classification (RS-Nets §4): top-1/top-5 accuracy per sub-network."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from pydantic import field_validator
from rsvision.tasks.base import Metrics, Task
from torch.utils.data import Dataset

from rsvision.data.mapped import MappedDataset
from rsvision.data.transforms import EvalTransform, MultiResolutionTransform
from rsvision.errors import UserError
from rsvision.recipe import Recipe, TaskFields, ordered_pair
from rsvision.registry import register_task


class ClassificationMetrics(Metrics):
    """Top-1 and top-5 accuracy in percent (top-k capped at the number of classes)."""

    names = ("top1", "top5")

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        from torchmetrics.classification import MulticlassAccuracy  # imported on first use: it loads scipy

        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
        self.top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(device)

    def update(self, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        # The states stay where they were put (:meth:`Metrics.to`), batch or no batch.
        logits, target = logits.to(self.top1.device), batch["target"].to(self.top1.device)
        self.top1.update(logits, target)
        self.top5.update(logits, target)

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
