"""Training order and augmentation randomness as functions of (seed, epoch, sample index).

A resumed run must see exactly the batches and augmentations of an uninterrupted one,
whatever the number of DataLoader workers and processes. Two pieces make that so:

- :class:`EpochSampler` shuffles with a generator seeded by (seed, epoch) and hands out
  *keys* ``epoch * n + index``, so the epoch travels with each sample to the workers;
- :class:`EpochSeeded` seeds torch's and numpy's global random state from (seed, epoch,
  index) before each sample's transform, so any transform drawing from them (torchvision,
  albumentations seeded from torch, user code) is reproducible per sample.

A dataset with one split (an image folder without ``val/``) is split by a seeded permutation
(:func:`split_off`, ``data.val_split``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, Subset

from rsvision.errors import UserError


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler[int]):
    """A seeded shuffle per epoch, yielding keys ``epoch * n + index`` (see the module docstring).

    The order depends on (seed, epoch) only, so any number of processes sharding its
    batches sees the same global order.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = range(self.size)
        base = self.epoch * self.size
        return (base + i for i in order)


@contextmanager
def restored_random() -> Iterator[None]:
    """Restore torch's (CPU) and numpy's global generators after the block."""
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)


def seed_random(seed: int) -> None:
    """Seed torch's (CPU) and numpy's global generators.

    Only the CPU generator is seeded: ``torch.manual_seed`` would also queue a seed for
    every CUDA device, which costs ~100x more per sample than the transform it seeds.
    """
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)


class EpochSeeded(Dataset):
    """``dataset[index]`` with its randomness seeded by (seed, epoch, index), read from a sampler key.

    The global generators are left as they were: restored after each sample, or after each
    batch when the DataLoader fetches a batch at once (saving numpy's state costs more than
    a small image's transform).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def _seeded(self, key: int) -> Any:
        epoch, index = divmod(int(key), len(self.dataset))
        seed_random(mix_seed(self.seed, epoch, index))
        return self.dataset[index]

    def __getitem__(self, key: int) -> Any:
        with restored_random():
            return self._seeded(key)

    def __getitems__(self, keys: list[int]) -> list[Any]:
        with restored_random():
            return [self._seeded(key) for key in keys]


#: Mixed into the seed of a validation split (:func:`split_off`), apart from every epoch's order.
VAL_SPLIT_STREAM = 0x5A17


class SplitPart(Subset):
    """One part of a split dataset; keeps its ``classes`` and ``class_to_idx`` (what the task
    checks and the run records), ``fixed_samples`` and ``in_memory`` (what ``data.cache: auto`` reads) and the
    part's ``targets``."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        super().__init__(dataset, indices)
        for name in ("classes", "class_to_idx", "fixed_samples", "in_memory"):
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))
        if hasattr(dataset, "targets"):
            self.targets = [dataset.targets[i] for i in indices]


def split_off(dataset: Dataset, split: str, fraction: float, seed: int, source: str = "data.val_split") -> SplitPart:
    """The ``train`` or ``val`` part of a one-split ``dataset``: ``round(fraction * n)`` samples,
    drawn by a permutation seeded by ``seed``, are ``val``, the others ``train`` (each part in
    the dataset's order), so every command that rebuilds the run's data sees the same parts."""
    n = len(dataset)
    held = round(fraction * n)
    if not 0 < held < n:
        raise UserError(f"{source}: {fraction} of {n} samples leaves {held} for validation and {n - held} for training; both need at least one")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, VAL_SPLIT_STREAM))).tolist()
    return SplitPart(dataset, sorted(order[:held] if split == "val" else order[held:]))
