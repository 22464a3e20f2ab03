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

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A batch of samples (DataLoader fetches batches this way): ``fn.many`` when ``fn``
        can map several samples at once, else one by one."""
        samples = [self.base[i] for i in indices]
        many = getattr(self.fn, "many", None)
        return many(samples) if many is not None else [self.fn(*sample) for sample in samples]
