"""Image classification (RS-Nets §4): top-1/top-5 accuracy per sub-network."""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
import torch.distributed as dist
from pydantic import field_validator
from rsvision.tasks.base import Metrics, Task
from torch.utils.data import Dataset

from rsvision.data.mapped import MappedDataset
from rsvision.data.cache import InMemory
from rsvision.data.transforms import EvalTransform, MultiResolutionTransform, crop_batch
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
    #: Where the training crops are cut: ``sample`` crops and resizes each image in the
    #: loader; ``batch`` draws each image's crop and flip there (the same draws) and cuts the
    #: whole batch at once (:func:`~rsvision.data.transforms.crop_batch`), which needs images
    #: decoded once (``data.cache``) and of one size; ``auto`` is ``batch`` where it can be.
    crop: Literal["auto", "sample", "batch"] = "auto"

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
        dataset = self.dataset("train")
        on_batch, self.crop_reason = self.crop_choice(dataset)
        transform = MultiResolutionTransform(
            self.resolutions, d.crop_scale, d.crop_ratio, d.multi_crop, self.input_format, per_sample=d.resize == "sample", crop_on_batch=on_batch
        )
        return MappedDataset(dataset, LabelledImage(transform))

    def crop_choice(self, dataset: Dataset) -> tuple[bool, str]:
        """``(crop the batch at once, reason)`` for ``data.crop`` on the training ``dataset``."""
        setting, d = self.fields.crop, self.recipe.data
        if setting == "sample":
            return False, "data.crop: sample"
        why_not = None
        if d.resize == "sample" or self.fields.multi_crop:
            why_not = "resize: sample cuts every resolution in the loader"
        elif not isinstance(dataset, InMemory):
            why_not = f"the training images are not decoded once ({self.cache_reasons.get('train', 'data.cache')})"
        else:
            sizes = {tuple(image.shape[-2:]) for image, _ in dataset.samples}
            if len(sizes) > 1:
                why_not = f"the training images come in {len(sizes)} sizes"
        if why_not is None:
            return True, f"data.crop: {setting}" + (" -> batch" if setting == "auto" else "")
        if setting == "batch":
            raise UserError(f"{self.recipe.source}: data.crop: batch needs training images decoded once and of one size; {why_not}")
        return False, f"data.crop: auto -> sample: {why_not}"

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Training samples into a batch; samples handed over whole with their drawn crops
        (``data.crop: batch``) are cut here, at the largest resolution."""
        if "crop" not in samples[0]:
            return super().collate(samples)
        images = torch.stack([s["image"] for s in samples])
        crops = torch.stack([s["crop"] for s in samples])
        return {"image": crop_batch(images, crops, max(self.resolutions)), "target": torch.tensor([s["target"] for s in samples])}

    def eval_dataset(self, resolutions: Sequence[int], split: str = "val") -> Dataset:
        return MappedDataset(self.dataset(split), LabelledImage(EvalTransform(resolutions, self.input_format)))

    def metrics(self) -> Metrics:
        return ClassificationMetrics(self.recipe.model.num_classes)
