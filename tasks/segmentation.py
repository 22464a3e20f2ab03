"""Semantic segmentation (RS-Nets App. B): RefineNet on NYUDv2, pixel acc / mean acc / mean IoU.

Training: the S logits (at the head's stride, e.g. 88, 56, 24 for inputs 352, 224, 96
with RefineNet) are upsampled bilinearly to the largest input size, where the loss
(per-pixel CE, ensemble, distillation; void pixels excluded) is computed (Fig. 7).
Evaluation at r: the image resized to r x r, its logits upsampled to the image's
original size; no flips, no multi-scale.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import field_validator
from rsvision.tasks.base import Metrics, Task
from torch.utils.data import Dataset

from rsvision.constants import VOID
from rsvision.data.mapped import MappedDataset
from rsvision.recipe import TaskFields, ordered_pair
from rsvision.registry import register_task


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, float]:
    """Pixel accuracy, mean accuracy and mean IoU in % from ``confusion[true, pred]``.

    Mean accuracy averages the per-class recall over classes present in the ground truth;
    mean IoU averages TP / (TP + FP + FN) over classes present in the ground truth or the
    prediction (the FCN convention used by RefineNet's NYUDv2 numbers).
    """
    c = confusion.double()
    tp = c.diagonal()
    gt, pred = c.sum(1), c.sum(0)
    union = gt + pred - tp
    present, seen = gt > 0, union > 0
    return {
        "pixel_acc": 100 * float(tp.sum() / c.sum().clamp_min(1)),
        "mean_acc": 100 * float((tp[present] / gt[present]).mean()) if present.any() else 0.0,
        "miou": 100 * float((tp[seen] / union[seen]).mean()) if seen.any() else 0.0,
    }


class SegmentationMetrics(Metrics):
    """A confusion matrix over valid pixels (void excluded), reduced across processes by torchmetrics."""

    names = ("pixel_acc", "mean_acc", "miou")

    def __init__(self, num_classes: int, ignore_index: int = VOID) -> None:
        from torchmetrics.classification import MulticlassConfusionMatrix  # imported on first use: it loads scipy

        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)

    def update(self, logits: torch.Tensor, batch: dict[str, Any]) -> None:
        # The states stay where they were put (:meth:`Metrics.to`), batch or no batch.
        device = self.confusion.device
        self.confusion.update(logits.argmax(1).to(device), batch["target"].to(device))

    def compute(self) -> dict[str, float]:
        return scores_from_confusion(self.confusion.compute())


def upsample(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``[N, C, h, w]`` logits to ``size``."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationFields(TaskFields):
    """The segmentation task's ``data`` fields."""

    #: Random rescale factor of the training image before the crop.
    scale_range: tuple[float, float] = (0.5, 2.0)

    _ordered = field_validator("scale_range")(ordered_pair)


@register_task("seg")
class SegmentationTask(Task):
    ignore_index = VOID
    primary_metric = "miou"
    data_fields = SegmentationFields

    def train_dataset(self) -> Dataset:
        from rsvision.data.seg_transforms import JointTrainTransform  # albumentations, for seg runs only

        d = self.recipe.data
        transform = JointTrainTransform(self.resolutions, d.scale_range, self.input_format, per_sample=d.resize == "sample")
        return MappedDataset(self.dataset("train"), transform)

    def eval_dataset(self, resolutions: Sequence[int], split: str = "val") -> Dataset:
        from rsvision.data.seg_transforms import JointEvalTransform

        return MappedDataset(self.dataset(split), JointEvalTransform(resolutions, self.input_format))

    def eval_collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack the resized images; pad the original-size masks to one size with the void label.

        ``size`` keeps each image's original ``(H, W)`` so :meth:`eval_logits` can resize
        every image's logits to its own size; the padding is void and never scored.
        """
        sizes = torch.tensor([tuple(s["target"].shape) for s in samples], dtype=torch.long)
        h, w = (int(v) for v in sizes.max(0).values)
        target = torch.full((len(samples), h, w), VOID, dtype=torch.long)
        for i, s in enumerate(samples):
            target[i, : s["target"].shape[0], : s["target"].shape[1]] = s["target"]
        images = [torch.stack([s["images"][k] for s in samples]) for k in range(len(samples[0]["images"]))]
        return {"images": images, "target": target, "size": sizes}

    def loss_logits(self, logits: Sequence[torch.Tensor], batch: dict[str, Any]) -> list[torch.Tensor]:
        """Every resolution's logits upsampled to the largest input size (App. B, Fig. 7)."""
        size = batch["target"].shape[-2:]
        return [upsample(z, size) for z in logits]

    def eval_logits(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Each image's logits upsampled to its original size (zeros on the void padding)."""
        sizes = batch["size"].tolist()
        h, w = batch["target"].shape[-2:]
        if all(tuple(s) == (h, w) for s in sizes):
            return upsample(logits, (h, w))
        out = logits.new_zeros(logits.shape[0], logits.shape[1], h, w)
        for i, (hi, wi) in enumerate(sizes):
            out[i, :, :hi, :wi] = upsample(logits[i : i + 1], (hi, wi))[0]
        return out

    def metrics(self) -> Metrics:
        return SegmentationMetrics(self.recipe.model.num_classes, self.ignore_index)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ignore_index": self.ignore_index, "eval": "image resized to r x r; logits resized to the original size"}
