"""MNIST-format (IDX) image classification: MNIST, Fashion-MNIST, KMNIST.

``data.root`` holds the four files of the MNIST distribution, gzipped or not::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]    (split "train")
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]     (split "val")

An IDX file is a big-endian header (two zero bytes, a type code, 0x08 for unsigned bytes,
the number of dimensions, then one 32-bit size per dimension) followed by the values. The
files are read and checked once per dataset; a sample is ``(PIL "L" image, class index)``.
Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from rsvision.constants import check_split
from rsvision.errors import UserError
from rsvision.registry import register_dataset

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = {
    "digits": tuple(str(d) for d in range(10)),
    "fashion": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array of an IDX file with ``ndim`` dimensions (gzip detected by content)."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot decompress ({exc})") from None
    expected = bytes([0, 0, _UBYTE, ndim])
    if raw[:4] != expected:
        raise UserError(f"{path}: not an IDX file of {ndim}-d unsigned bytes (magic number {raw[:4].hex() or 'missing'}, expected {expected.hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"{path}: truncated header ({len(raw)} bytes, expected {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        dims = " x ".join(map(str, shape))
        raise UserError(f"{path}: the header promises {dims} = {size} values, the file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{root / name}: file not found, gzipped (.gz) or not (data.root must hold the four MNIST-format files)")


class IdxDataset(Dataset):
    """Grey images and labels from a pair of IDX files, kept in memory as uint8 arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]), int(self.labels[index])


@register_dataset("mnist")
def mnist(
    *,
    root: str | None = None,
    split: str = "train",
    train_size: int | None = None,
    val_size: int | None = None,
    subset_seed: int | None = None,
    names: str | list[str] = "digits",
) -> Dataset:
    """MNIST-format files under ``root``; ``train_size`` / ``val_size`` keep the first N
    samples of a split, or N drawn at random when ``subset_seed`` is set. ``names`` is
    ``digits`` (0-9), ``fashion`` (Fashion-MNIST's ten classes) or a list of class names;
    every label must index into it."""
    check_split(split)
    if root is None:
        raise UserError("data.root: the mnist dataset needs the folder holding its four IDX files")
    if isinstance(names, str):
        if names not in CLASS_NAMES:
            raise UserError(f"data.args.names: expected {' or '.join(CLASS_NAMES)} or a list of class names, got '{names}'")
        names = CLASS_NAMES[names]
    classes = [str(n) for n in names]
    folder = Path(root).expanduser()
    image_path, label_path = (_find(folder, name) for name in FILES[split])
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if len(images) != len(labels):
        raise UserError(f"{label_path}: {len(labels)} labels for the {len(images)} images of {image_path}")
    if len(labels) and labels.max() >= len(classes):
        bad = int(np.argmax(labels >= len(classes)))
        raise UserError(f"{label_path}: label {labels[bad]} at index {bad} is out of range for {len(classes)} classes (data.args.names)")
    size = train_size if split == "train" else val_size
    if size is not None:
        if not 0 < size <= len(labels):
            raise UserError(f"data.args.{split}_size: expected 1 to {len(labels)} (the samples in {image_path.name}), got {size}")
        keep = np.arange(size) if subset_seed is None else np.sort(np.random.default_rng(subset_seed).choice(len(labels), size, replace=False))
        images, labels = images[keep], labels[keep]
    return IdxDataset(images, labels, classes)
