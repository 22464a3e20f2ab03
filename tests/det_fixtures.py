"""COCO-format files written by the detection tests."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths in column-major order, starting with zeros."""
    flat, counts, value, run = mask.flatten(order="F"), [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    return counts + [run]


def write_coco(root, annotations, images=None, split="train"):
    """A 3-image COCO file (20x30, 20x30, 10x10) with categories 7 'cat' and 3 'ant'."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}, {"id": 2, "file_name": "b.png", "width": 30, "height": 20}, {"id": 5, "file_name": "c.png", "width": 10, "height": 10}]
    for entry in images:
        Image.fromarray(np.full((entry["height"], entry["width"], 3), 100, np.uint8)).save(folder / entry["file_name"])
    (root / "annotations").mkdir(exist_ok=True)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "ant"}]}))
    return path


def polygon(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]
