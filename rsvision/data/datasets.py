"""Built-in classification datasets: ``synthetic``, ``imagefolder``, ``cifar10``, ``cifar100``.

A dataset builder is ``fn(*, root, split, **args)`` returning a map-style dataset of
``(PIL RGB image, class index)`` with a ``classes`` attribute. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from rsvision.constants import SPLITS, check_split, split_seed
from rsvision.errors import UserError
from rsvision.registry import register_dataset


class SyntheticShapes(Dataset):
    """Deterministic images whose class needs fine detail: a striped shape on noise.

    Class = (shape: disc or square) x (stripe period, ``periods`` values, in pixels of a
    64-pixel image, scaled with ``image_size``). The shape covers 35-70% of the image at a
    random place, angle and colour; the stripes of adjacent classes differ by a couple of
    pixels in period, so downsizing the image blurs them together and accuracy really
    drops at low resolution.
    """

    shapes = ("disc", "square")
    default_periods = (4.0, 6.0, 9.0, 13.5, 20.0)

    def __init__(self, size: int, image_size: int = 64, periods: tuple[float, ...] = default_periods, seed: int = 0) -> None:
        self.size, self.image_size, self.periods, self.seed = size, image_size, tuple(periods), seed
        self.classes = [f"{s}_p{p:g}" for s in self.shapes for p in self.periods]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(len(self.classes)))
        shape, period = divmod(label, len(self.periods))
        return Image.fromarray(self._draw(rng, shape, self.periods[period])), label

    def _draw(self, rng: np.random.Generator, shape: int, period: float) -> np.ndarray:
        n = self.image_size
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
        radius = n * rng.uniform(0.18, 0.3)
        cy, cx = rng.uniform(radius, n - radius, size=2)
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        inside = (u**2 + v**2 <= radius**2) if shape == 0 else (np.maximum(abs(u), abs(v)) <= radius * 0.85)
        period = period * n / 64
        stripes = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi)))
        fg = rng.uniform(0.5, 1.0, size=3)
        bg = rng.uniform(0.0, 0.5, size=3)
        image = bg + rng.normal(0, 0.08, size=(n, n, 3))
        image = np.where(inside[..., None], fg * (0.35 + 0.65 * stripes[..., None]), image)
        return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@register_dataset("synthetic")
def synthetic(
    *, root: str | None = None, split: str = "train", train_size: int = 2000, val_size: int = 500, image_size: int = 64, num_classes: int = 10, seed: int = 0
) -> Dataset:
    """Built-in data, generated on the fly: no files, no download.

    ``num_classes`` (2 to 10) keeps both shapes and the finest ``num_classes / 2`` periods.
    """
    check_split(split)
    if not 2 <= num_classes <= 10 or num_classes % 2:
        raise UserError(f"data.args.num_classes: the synthetic dataset has 2, 4, 6, 8 or 10 classes, got {num_classes}")
    size = train_size if split == "train" else val_size
    periods = SyntheticShapes.default_periods[: num_classes // 2]
    return SyntheticShapes(size, image_size, periods, seed=split_seed(seed, split))


def read_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB (grey and palette images converted); an unreadable file is named."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


class ClassListFolder(ImageFolder):
    """An image folder whose class indices come from a given class list (the training split's)."""

    def __init__(self, folder: Path, classes: list[str]) -> None:
        self.class_list = list(classes)
        super().__init__(str(folder), loader=read_rgb, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return list(self.class_list), {c: i for i, c in enumerate(self.class_list)}


@register_dataset("imagefolder")
def imagefolder(*, root: str | None = None, split: str = "train") -> Dataset:
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (torchvision's layout).

    Class indices follow the sorted class folders of ``train/`` for both splits, so a
    validation folder lacking a class keeps the others' indices; a validation class that
    training does not have is an error.
    """
    check_split(split)
    if root is None:
        raise UserError("data.root: the imagefolder dataset needs a root folder holding train/ and val/")
    base = Path(root).expanduser()
    folders = {s: base / s for s in SPLITS}
    for s in {"train", split}:
        if not folders[s].is_dir():
            raise UserError(f"{folders[s]}: folder not found (imagefolder expects {root}/train and {root}/val)")
    try:
        classes, _ = find_classes(str(folders["train"]))
        extra = sorted(set(find_classes(str(folders[split]))[0]) - set(classes))
    except FileNotFoundError as exc:
        raise UserError(f"{base}: {exc}") from None
    if extra:
        raise UserError(f"{folders[split]}: class folder(s) {', '.join(extra)} do not exist in {folders['train']} (training classes: {', '.join(classes)})")
    try:
        return ClassListFolder(folders[split], classes)
    except FileNotFoundError as exc:
        raise UserError(f"{folders[split]}: {exc}") from None


_CIFAR_FILES = {
    "CIFAR10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "CIFAR100": ("cifar-100-python.tar.gz", "cifar-100-python"),
}


def _cifar(cls_name: str, root: str | None, split: str) -> Dataset:
    import torchvision.datasets as tvd

    check_split(split)
    root = str(Path(root or "data").expanduser())
    try:
        ds = getattr(tvd, cls_name)(root, train=split == "train", download=False)
    except RuntimeError:
        archive, folder = _CIFAR_FILES[cls_name]
        raise UserError(
            f"data.root: {cls_name} not found under {root}; download {archive} and extract it there "
            f"(it unpacks to {root}/{folder})"
        ) from None
    return ds


@register_dataset("cifar10")
def cifar10(*, root: str | None = None, split: str = "train") -> Dataset:
    return _cifar("CIFAR10", root, split)


@register_dataset("cifar100")
def cifar100(*, root: str | None = None, split: str = "train") -> Dataset:
    return _cifar("CIFAR100", root, split)
