"""Object detection and instance segmentation with a switchable backbone (MutualNet §4.3).

A sub-network is a shorter-side size: torchvision's detector transform resizes each image
so its shorter side is the sub-network's resolution (:mod:`rsvision.models.detection`).
Training sums every size's detector losses on the ground truth (``parallel``: no
distillation, as §4.3). Evaluation runs every size on each validation image, maps its
boxes (and masks) back to the image's own size, and scores COCO's AP (AP at IoU
0.50:0.95, AP50, AP75, AP for small / medium / large objects; mask AP for Mask R-CNN) with
torchmetrics' ``MeanAveragePrecision`` (pycocotools), in percent; -1 where COCO has no
object of that size to score; at most the 100 most confident detections of an image count
(COCO's maxDets).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Sequence

import torch
import torch.distributed as dist
from pydantic import Field
from rsvision.tasks.base import Metrics, Task
from torch.utils.data import Dataset

from rsvision.data.detection import DetectionEvalTransform, DetectionTrainTransform
from rsvision.data.mapped import MappedDataset
from rsvision.models.pretrained import loaded_weights
from rsvision.nn.switchable import RSNet
from rsvision.recipe import TaskFields
from rsvision.registry import register_task

#: COCO's summary numbers: metric key → torchmetrics key (without its bbox_ / segm_ prefix).
AP_KEYS = {"ap": "map", "ap50": "map_50", "ap75": "map_75", "ap_s": "map_small", "ap_m": "map_medium", "ap_l": "map_large"}
#: COCO scores at most this many detections per image, the most confident.
MAX_DETECTIONS = 100
#: Mask R-CNN's mask probabilities above this are the predicted mask.
MASK_THRESHOLD = 0.5


def _percent(value: torch.Tensor) -> float:
    v = float(value)
    return v if v < 0 else 100 * v


class DetectionMetrics(Metrics):
    """COCO AP of one sub-network's detections (box AP; mask AP too with ``masks``).

    Each process keeps torchmetrics' per-image states of its own images (boxes on the
    evaluation's device, masks as COCO RLE). ``compute`` gathers every process's images,
    process by process, and scores them all on each process. torchmetrics' own reduction
    gathers these lists one image at a time, so it needs as many images on every process
    (else the processes wait on each other for ever); a shard of the validation set may be
    one image shorter, or empty.
    """

    def __init__(self, masks: bool = False, device: torch.device | str = "cpu") -> None:
        self.masks = masks
        self.names = tuple(AP_KEYS) + (("mask_ap", "mask_ap50", "mask_ap75") if masks else ())
        self.map = self._average_precision().to(device)

    def _average_precision(self):
        from torchmetrics.detection import MeanAveragePrecision  # on first use: it loads pycocotools

        iou_type = ("bbox", "segm") if self.masks else "bbox"
        return MeanAveragePrecision(box_format="xyxy", iou_type=iou_type, backend="pycocotools", sync_on_compute=False)

    def update(self, logits: list[dict[str, torch.Tensor]], batch: dict[str, Any]) -> None:
        device = self.map.device
        preds, targets = [], []
        for p, t in zip(logits, batch["target"]):
            top = p["scores"].argsort(descending=True)[:MAX_DETECTIONS]
            p = {k: v[top].detach().to(device) for k, v in p.items()}
            pred = {"boxes": p["boxes"], "scores": p["scores"], "labels": p["labels"]}
            target = {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device), "iscrowd": t["iscrowd"].to(device)}
            if self.masks:
                pred["masks"] = p["masks"][:, 0] > MASK_THRESHOLD
                target["masks"] = t["masks"].to(device).bool()
            preds.append(pred)
            targets.append(target)
        self.map.update(preds, targets)

    def compute(self) -> dict[str, float]:
        with warnings.catch_warnings():
            # Gathered states are loaded, not updated (and a process may have had no image):
            # torchmetrics would warn that compute comes before update.
            warnings.filterwarnings("ignore", message="The ``compute`` method of metric MeanAveragePrecision was called before")
            result = self._every_process().compute()
        box = "bbox_" if self.masks else ""
        out = {name: _percent(result[box + key]) for name, key in AP_KEYS.items()}
        if self.masks:
            out |= {"mask_ap": _percent(result["segm_map"]), "mask_ap50": _percent(result["segm_map_50"]), "mask_ap75": _percent(result["segm_map_75"])}
        return out

    def _every_process(self):
        """The metric holding every process's images in process order (this one's alone without a process group)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.map
        local = {name: [v.cpu() if isinstance(v, torch.Tensor) else v for v in state] for name, state in self.map.metric_state.items()}
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)  # any number of images per process; a pickle, so any backend
        merged = self._average_precision()
        merged.load_state_dict({name: [v for part in gathered for v in part[name]] for name in local})
        return merged


class DetectionFields(TaskFields):
    """The detection task's ``data`` fields."""

    #: Probability of a horizontal flip of a training image (with its boxes and masks).
    flip: float = Field(0.5, ge=0, le=1)


@register_task("det")
class DetectionTask(Task):
    primary_metric = "ap"
    data_fields = DetectionFields
    own_losses = True
    training_method = "parallel"

    @property
    def masks(self) -> bool:
        return self.recipe.model.head == "maskrcnn"

    def build_model(self) -> RSNet:
        """The switchable detector (``model.head``: fasterrcnn or maskrcnn; ``model.head_args``:
        :func:`~rsvision.models.detection.create_detector`'s own arguments, the rest to torchvision)."""
        from rsvision.models.detection import create_detector

        m, d = self.recipe.model, self.recipe.data
        own = set(inspect.signature(create_detector).parameters)
        head_args = {k: v for k, v in m.head_args.items() if k not in own}
        model = create_detector(
            backbone=m.backbone,
            head=m.head,
            num_classes=self.resolve_num_classes(),
            subnets=self.recipe.subnets,
            in_channels=m.in_channels,
            mean=tuple(d.mean) if d.normalize else (0.0,) * m.in_channels,
            std=tuple(d.std) if d.normalize else (1.0,) * m.in_channels,
            pretrained=m.pretrained,
            backbone_args=m.backbone_args,
            head_args=head_args,
            widths=self.recipe.widths.trained if self.recipe.widths is not None else None,
            width_divisor=self.recipe.widths.divisor if self.recipe.widths is not None else 8,
            shared_bn=self.recipe.widths.bn == "posthoc" if self.recipe.widths is not None else m.shared_bn,
            **{k: v for k, v in m.head_args.items() if k in own},
        )
        self.pretrained = loaded_weights(model)
        return model

    def train_dataset(self) -> Dataset:
        return MappedDataset(self.dataset("train"), DetectionTrainTransform(self.input_format.channels, self.fields.flip, self.masks))

    def eval_dataset(self, resolutions: Sequence[int], split: str = "val") -> Dataset:
        return MappedDataset(self.dataset(split), DetectionEvalTransform(self.input_format.channels, len(resolutions)))

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Images of any sizes stay a list (the detector batches them at each size)."""
        return {"image": [s["image"] for s in samples], "target": [s["target"] for s in samples]}

    def eval_collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        images = [s["images"][0] for s in samples]
        return {"images": [images] * len(samples[0]["images"]), "target": [s["target"] for s in samples]}

    def subnet_losses(self, model: RSNet, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """torchvision's detector losses (RPN objectness and box, box classifier and regression,
        masks) of the pinned size."""
        return model(batch["image"], batch["target"])

    def eval_logits(self, logits: list[dict[str, torch.Tensor]], batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        return logits

    def batch_accuracy(self, logits, batch: dict[str, Any]) -> float:
        raise NotImplementedError("detection has no per-batch accuracy; its training logs the losses")

    def metrics(self) -> Metrics:
        return DetectionMetrics(self.masks)

    def example_input(self, resolution: int) -> list[torch.Tensor]:
        """One square image at the size: what MAdds per sub-network are counted on."""
        return [torch.zeros(self.input_format.channels, resolution, resolution)]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "eval": "shorter side resized to the sub-network's size (longer side capped); boxes mapped back to the image",
            "metric": "COCO AP (pycocotools through torchmetrics), percent",
        }
