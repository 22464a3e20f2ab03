"""``data.cache``: decode every sample once and keep it in RAM.

Samples are decoded in the main process before DataLoader workers start, so the workers
share the decoded samples (copy-on-write) instead of each decoding or holding its own.
How a sample is kept is the task's choice (:meth:`rsvision.tasks.base.Task.decoded`:
PIL images as uint8 arrays, or classification's images already in the network's input
format); the transforms take either, and give the same values as from the undecoded sample.

``memory`` always decodes once; ``none`` never; ``auto`` (the default) decodes once when
that can change nothing but the time (:func:`cache_choice`): the dataset says its samples
are the same on every read (a ``fixed_samples`` attribute, set by the built-in
classification datasets), the run reads them more than once (``train.epochs`` > 1) or they
are held in memory already (an ``in_memory`` attribute: decoding is then a copy), and the
decoded split takes at most :data:`MEMORY_SHARE` of the machine's memory, shared by the
run's processes on the machine (``LOCAL_WORLD_SIZE``, set by ``torchrun`` and Accelerate:
each holds its own copy).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

#: The share of the machine's physical memory ``data.cache: auto`` may fill with one split.
MEMORY_SHARE = 1 / 8


def decoded_sample(sample: Any) -> Any:
    """``sample`` (a tuple or dict of images and labels) with its PIL images as uint8 arrays."""
    if isinstance(sample, tuple):
        return tuple(np.array(v) if isinstance(v, Image.Image) else v for v in sample)
    if isinstance(sample, dict):
        return {k: np.array(v) if isinstance(v, Image.Image) else v for k, v in sample.items()}
    return np.array(sample) if isinstance(sample, Image.Image) else sample


def sample_bytes(sample: Any) -> int:
    """Bytes held by the arrays and tensors of a decoded sample."""
    if isinstance(sample, (tuple, list)):
        return sum(sample_bytes(v) for v in sample)
    if isinstance(sample, dict):
        return sum(sample_bytes(v) for v in sample.values())
    if isinstance(sample, np.ndarray):
        return sample.nbytes
    if isinstance(sample, torch.Tensor):
        return sample.numel() * sample.element_size()
    return 0


def physical_memory() -> int | None:
    """Bytes of physical memory, where the system says (None elsewhere)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def cache_choice(setting: str, dataset: Dataset, decode: Callable[[Any], Any], epochs: int) -> tuple[bool, str]:
    """``(decode once, reason)`` for ``data.cache: setting`` on ``dataset``.

    ``auto`` estimates the decoded size from the first, middle and last samples.
    """
    if setting != "auto":
        return setting == "memory", f"data.cache: {setting}"
    name = type(dataset).__name__
    if not getattr(dataset, "fixed_samples", False):
        return False, f"data.cache: auto -> none: {name} does not declare fixed_samples (its samples might change between reads)"
    if epochs < 2 and not getattr(dataset, "in_memory", False):
        return False, "data.cache: auto -> none: one epoch reads each sample once"
    size = len(dataset)
    probes = sorted({0, size // 2, size - 1}) if size else []
    estimate = int(np.mean([sample_bytes(decode(dataset[i])) for i in probes]) * size) if probes else 0
    memory = physical_memory()
    if memory is None:
        return False, "data.cache: auto -> none: the machine's memory is unknown"
    copies = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    budget = int(memory * MEMORY_SHARE / copies)
    if estimate > budget:
        share = f"{MEMORY_SHARE:.3g} of memory" + (f" over {copies} processes" if copies > 1 else "")
        return False, f"data.cache: auto -> none: {size} samples, about {estimate / 2**20:.0f} MiB decoded, over {budget / 2**20:.0f} MiB ({share})"
    return True, f"data.cache: auto -> memory: {size} samples, about {estimate / 2**20:.1f} MiB decoded"


class InMemory(Dataset):
    """``dataset`` with every sample decoded once by ``decode``."""

    def __init__(self, dataset: Dataset, decode: Callable[[Any], Any] = decoded_sample) -> None:
        self.classes = getattr(dataset, "classes", None)
        self.samples = [decode(dataset[i]) for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]
