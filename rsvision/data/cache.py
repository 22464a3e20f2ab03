"""``data.cache: memory``: decode every sample once and keep it in RAM.

Samples are decoded in the main process before DataLoader workers start, so the workers
share the decoded arrays (copy-on-write) instead of each decoding or holding its own.
PIL images are kept as uint8 arrays; the transforms take either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


def _decoded(value: Any) -> Any:
    return np.array(value) if isinstance(value, Image.Image) else value


class InMemory(Dataset):
    """``dataset`` with every sample decoded once (tuples of images and labels, or dicts)."""

    def __init__(self, dataset: Dataset) -> None:
        self.classes = getattr(dataset, "classes", None)
        self.samples = []
        for i in range(len(dataset)):
            sample = dataset[i]
            if isinstance(sample, tuple):
                sample = tuple(_decoded(v) for v in sample)
            elif isinstance(sample, dict):
                sample = {k: _decoded(v) for k, v in sample.items()}
            self.samples.append(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]
