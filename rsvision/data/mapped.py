"""A dataset view that turns raw samples into the batch dicts a task trains on."""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import Dataset


class MappedDataset(Dataset):
    """``fn(*base[i])``: e.g. ``(image, label)`` → ``{"images": [...], "target": label}``."""

    def __init__(self, base: Dataset, fn: Callable[..., dict[str, Any]]) -> None:
        self.base, self.fn = base, fn

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.fn(*self.base[index])
