"""Detections drawn on the image: boxes, class names and scores, and Mask R-CNN's masks.

``predict_detections`` runs a detection run's model as one size (the image's shorter side
resized to it by the detector, the boxes mapped back); ``draw_detections`` draws those
above ``score_threshold`` with torchvision's drawing utilities, one colour per class
(:func:`rsvision.deploy.masks.palette`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from accelerate.utils import convert_to_fp32
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from rsvision.data.detection import float_image
from rsvision.nn.switchable import RSNet, at_resolution
from rsvision.tasks.detection import MASK_THRESHOLD

#: Detections drawn: those scoring at least this.
SCORE_THRESHOLD = 0.5


@torch.no_grad()
def predict_detections(model: RSNet, image: np.ndarray, resolution: int, channels: int = 3) -> dict[str, torch.Tensor]:
    """The detections of ``image`` (``HxWx3`` uint8) at ``resolution``, in the image's pixels (float32, on the CPU)."""
    x = float_image(image, channels).to(next(model.parameters()).device)
    with at_resolution(model, resolution):
        return {k: v.cpu() for k, v in convert_to_fp32(model([x])[0]).items()}


def draw_detections(
    image: np.ndarray, detections: dict[str, torch.Tensor], class_names: Sequence[str], colours: np.ndarray, score_threshold: float = SCORE_THRESHOLD
) -> np.ndarray:
    """``image`` (``HxWx3`` uint8) with the detections scoring at least ``score_threshold``."""
    keep = detections["scores"] >= score_threshold
    labels = detections["labels"][keep].tolist()
    scores = detections["scores"][keep].tolist()
    picked = [tuple(int(c) for c in colours[label - 1]) for label in labels]
    canvas = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if "masks" in detections and keep.any():
        masks = detections["masks"][keep][:, 0] > MASK_THRESHOLD
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.4, colors=picked)
    if keep.any():
        text = [f"{class_names[label - 1]} {score:.2f}" for label, score in zip(labels, scores)]
        canvas = draw_bounding_boxes(canvas, detections["boxes"][keep], labels=text, colors=picked, width=1)
    return canvas.numpy().transpose(1, 2, 0).copy()
