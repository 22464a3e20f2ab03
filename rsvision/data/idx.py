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

    #: Every read of a sample gives the same sample (``data.cache: auto`` may decode it once).
    fixed_samples = True
    #: The arrays are in memory already: decoding once is a copy, worth it even for one epoch.
    in_memory = True

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
    val_from: str = "test",
) -> Dataset:
    """MNIST-format files under ``root``; ``train_size`` / ``val_size`` keep the first N
    samples of a split, or N drawn at random when ``subset_seed`` is set. ``names`` is
    ``digits`` (0-9), ``fashion`` (Fashion-MNIST's ten classes) or a list of class names;
    every label must index into it. ``val_from: train`` makes the val split ``val_size``
    held-out images of the training file, disjoint from the training samples (a validation
    split for choosing hyperparameters; the test file is then never read)."""
    check_split(split)
    if val_from not in ("test", "train"):
        raise UserError(f"data.args.val_from: expected 'test' or 'train', got '{val_from}'")
    if root is None:
        raise UserError("data.root: the mnist dataset needs the folder holding its four IDX files")
    if isinstance(names, str):
        if names not in CLASS_NAMES:
            raise UserError(f"data.args.names: expected {' or '.join(CLASS_NAMES)} or a list of class names, got '{names}'")
        names = CLASS_NAMES[names]
    classes = [str(n) for n in names]
    folder = Path(root).expanduser()
    held_out = split == "val" and val_from == "train"
    image_path, label_path = (_find(folder, name) for name in FILES["train" if held_out else split])
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if len(images) != len(labels):
        raise UserError(f"{label_path}: {len(labels)} labels for the {len(images)} images of {image_path}")
    if len(labels) and labels.max() >= len(classes):
        bad = int(np.argmax(labels >= len(classes)))
        raise UserError(f"{label_path}: label {labels[bad]} at index {bad} is out of range for {len(classes)} classes (data.args.names)")
    if held_out:
        keep = _held_out(len(labels), train_size, val_size, subset_seed, image_path)
    else:
        size = train_size if split == "train" else val_size
        keep = None if size is None else _subset(len(labels), size, subset_seed, f"data.args.{split}_size", image_path)
    if keep is not None:
        images, labels = images[keep], labels[keep]
    return IdxDataset(images, labels, classes)


def _subset(total: int, size: int, seed: int | None, field: str, path: Path) -> np.ndarray:
    """The first ``size`` indices, or ``size`` drawn at random (sorted) when ``seed`` is set."""
    if not 0 < size <= total:
        raise UserError(f"{field}: expected 1 to {total} (the samples in {path.name}), got {size}")
    return np.arange(size) if seed is None else np.sort(np.random.default_rng(seed).choice(total, size, replace=False))


def _held_out(total: int, train_size: int | None, val_size: int | None, seed: int | None, path: Path) -> np.ndarray:
    """``val_size`` indices of the training file that the training subset does not use:
    the next ones after it, or drawn at random from the rest when ``seed`` is set."""
    if train_size is None or val_size is None:
        raise UserError("data.args.val_from: 'train' needs train_size and val_size (the held-out images come from the training file)")
    if train_size + val_size > total:
        raise UserError(f"data.args.val_size: {train_size} training + {val_size} held-out images exceed the {total} samples in {path.name}")
    used = _subset(total, train_size, seed, "data.args.train_size", path)
    rest = np.setdiff1d(np.arange(total), used)
    return rest[:val_size] if seed is None else np.sort(np.random.default_rng(seed + 1).choice(rest, val_size, replace=False))


#: The task whose samples it gives: a recipe of another task is refused when validated.
mnist.task = "cls"
