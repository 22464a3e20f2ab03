"""Segmentation datasets: ``nyudv2``, ``segfolder`` and the built-in ``synthetic_seg``.

A builder is ``fn(*, root, split, **args)`` returning a map-style dataset of
``(image, mask)``: an ``HxWx3`` uint8 RGB array and an ``HxW`` integer array of class
indices ``0 .. len(classes) - 1``, with ``VOID = 255`` for unlabelled pixels. The
dataset has a ``classes`` attribute. Split ``val`` is the test split where a dataset has
one (NYUDv2: the 654 test images). Bad data raises :class:`UserError` naming the sample.

Mask files are single-channel PNGs holding class indices, 255 = void.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from rsvision.constants import VOID, check_split, split_seed
from rsvision.data.datasets import read_rgb
from rsvision.errors import UserError
from rsvision.registry import register_dataset

NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip


def check_sample(image: np.ndarray, mask: np.ndarray, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one sample: same height and width, labels in ``0 .. num_classes - 1`` or VOID."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"{name}: expected an RGB image, got an array of shape {image.shape}")
    if mask.ndim != 2:
        raise UserError(f"{name}: expected a single-channel mask of class indices, got shape {mask.shape}")
    if mask.shape != image.shape[:2]:
        raise UserError(f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]} (WxH)")
    bad = np.unique(mask[(mask != VOID) & ((mask < 0) | (mask >= num_classes))])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5])
        raise UserError(f"{name}: mask has labels {shown} outside 0..{num_classes - 1} (use {VOID} for void pixels)")
    return image, mask


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"{path}: expected a single-channel mask of class indices, got a {img.mode} image")
            return np.asarray(img).astype(np.int64)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: cannot read mask ({exc.__class__.__name__}: {exc})") from None


class PairedFiles(Dataset):
    """Image/mask file pairs read from disk and checked against the class list."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]], classes: Sequence[str]) -> None:
        self.pairs = list(pairs)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image, mask = np.array(read_rgb(image_path)), _read_mask(mask_path)  # writable: torch shares its memory
        return check_sample(image, mask, len(self.classes), f"{image_path} / {mask_path.name}")


def read_pair_list(list_file: Path, root: Path, default_mask: Callable[[str], tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Pairs from a list file: ``image<TAB>mask`` paths relative to ``root``, or one name per line."""
    if not list_file.is_file():
        raise UserError(f"{list_file}: list file not found")
    pairs = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 2:
            pair = (root / fields[0], root / fields[1])
        elif len(fields) == 1:
            pair = default_mask(fields[0])
        else:
            raise UserError(f"{list_file}:{number}: expected 'IMAGE<TAB>MASK' or one name, got {line!r}")
        for path in pair:
            if not path.is_file():
                raise UserError(f"{list_file}:{number}: {path} not found")
        pairs.append(pair)
    if not pairs:
        raise UserError(f"{list_file}: no samples listed")
    return pairs


def _require_root(root: str | None, dataset: str, layout: str) -> Path:
    if root is None:
        raise UserError(f"data.root: the {dataset} dataset needs a root folder ({layout})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UserError(f"data.root: {path} is not a folder ({dataset} expects {layout})")
    return path


@register_dataset("segfolder")
def segfolder(*, root: str | None, split: str = "train") -> Dataset:
    """``root/images/*``, ``root/masks/<stem>.png``, ``root/{train,val}.txt`` and ``root/classes.yaml``.

    Each list line names an image in ``images/`` (``0001.jpg`` or just ``0001``), or gives
    ``image<TAB>mask`` paths relative to ``root``. ``classes.yaml`` is the list of class
    names; mask value i is ``classes[i]``, 255 is void.
    """
    check_split(split)
    base = _require_root(root, "segfolder", "images/, masks/, train.txt, val.txt, classes.yaml")
    classes_file = base / "classes.yaml"
    if not classes_file.is_file():
        raise UserError(f"{classes_file}: not found (segfolder needs the list of class names)")
    try:
        classes = yaml.safe_load(classes_file.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{classes_file}: not valid YAML ({exc})") from None
    if not isinstance(classes, list) or not classes:
        raise UserError(f"{classes_file}: expected a YAML list of class names")

    def by_name(name: str) -> tuple[Path, Path]:
        image = base / "images" / name
        if not image.suffix:
            found = sorted((base / "images").glob(f"{name}.*"))
            image = found[0] if found else base / "images" / f"{name}.png"
        return image, base / "masks" / f"{Path(name).stem}.png"

    return PairedFiles(read_pair_list(base / f"{split}.txt", base, by_name), [str(c) for c in classes])


class NYUDv2Mat(Dataset):
    """NYUDv2 from the official files: ``nyu_depth_v2_labeled.mat`` (HDF5), ``splits.mat``, ``classMapping40.mat``.

    MATLAB stores arrays column-major, so h5py sees ``images`` as ``[N, 3, W, H]`` and
    ``labels`` as ``[N, W, H]``; both are transposed back here. The 894 raw labels go to
    the 40 classes through ``mapClass`` (raw 0 = unlabelled → void), then to 0..39.
    """

    def __init__(self, root: Path, split: str) -> None:
        import h5py
        import scipy.io

        self.path = root / "nyu_depth_v2_labeled.mat"
        splits = self._loadmat(scipy.io, root / "splits.mat", ("trainNdxs", "testNdxs"))
        mapping = self._loadmat(scipy.io, root / "classMapping40.mat", ("mapClass",))
        key = "trainNdxs" if split == "train" else "testNdxs"
        self.indices = np.asarray(splits[key]).reshape(-1).astype(np.int64) - 1  # 1-based in MATLAB
        map_class = np.asarray(mapping["mapClass"]).reshape(-1).astype(np.int64)
        # lookup[raw] for raw 0..894: 0 (unlabelled) → void, k → mapClass[k-1] - 1.
        self.lookup = np.concatenate([[VOID], np.where(map_class > 0, map_class - 1, VOID)])
        self.classes = list(NYU40_CLASSES)
        try:
            with h5py.File(self.path, "r") as f:
                n = f["images"].shape[0]
                if f["labels"].shape[0] != n:
                    raise UserError(f"{self.path}: {n} images but {f['labels'].shape[0]} label maps")
        except (OSError, KeyError) as exc:
            raise UserError(f"{self.path}: cannot read images/labels ({exc.__class__.__name__}: {exc})") from None
        out_of_range = self.indices[(self.indices < 0) | (self.indices >= n)]
        if out_of_range.size:
            raise UserError(f"{root / 'splits.mat'}: {key} holds index {int(out_of_range[0]) + 1}, but the .mat has {n} images")
        self._file = None

    @staticmethod
    def _loadmat(sio, path: Path, keys: tuple[str, ...]) -> dict:
        if not path.is_file():
            raise UserError(f"{path}: not found (NYUDv2 needs it next to nyu_depth_v2_labeled.mat)")
        try:
            data = sio.loadmat(str(path))
        except (ValueError, OSError, TypeError) as exc:
            raise UserError(f"{path}: cannot read ({exc})") from None
        missing = [k for k in keys if k not in data]
        if missing:
            raise UserError(f"{path}: missing variable(s) {', '.join(missing)}")
        return data

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import h5py

        if self._file is None:  # opened lazily: each DataLoader worker gets its own handle
            self._file = h5py.File(self.path, "r")
        i = int(self.indices[index])
        image = np.ascontiguousarray(self._file["images"][i].transpose(2, 1, 0)).astype(np.uint8)
        raw = self._file["labels"][i].T.astype(np.int64)
        name = f"{self.path}: image {i + 1}"
        if raw.max(initial=0) >= len(self.lookup):
            raise UserError(f"{name}: raw label {int(raw.max())} is not in classMapping40.mat ({len(self.lookup) - 1} classes)")
        return check_sample(image, self.lookup[raw], len(self.classes), name)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


@register_dataset("nyudv2")
def nyudv2(*, root: str | None, split: str = "train") -> Dataset:
    """NYUDv2 with 40 classes, 795 train / 654 test images (``val`` = test).

    ``root`` holds either the official ``nyu_depth_v2_labeled.mat`` + ``splits.mat`` +
    ``classMapping40.mat``, or the RGB/label PNG folders with ``train.nyu`` and
    ``val.nyu`` list files (``image<TAB>label`` per line, labels 0..39, 255 void).
    """
    check_split(split)
    layout = "nyu_depth_v2_labeled.mat + splits.mat + classMapping40.mat, or train.nyu/val.nyu list files"
    base = _require_root(root, "nyudv2", layout)
    if (base / "nyu_depth_v2_labeled.mat").is_file():
        return NYUDv2Mat(base, split)
    list_file = base / f"{split}.nyu"
    if list_file.is_file():
        def no_single_names(name: str) -> tuple[Path, Path]:
            raise UserError(f"{list_file}: line {name!r}: expected 'IMAGE<TAB>LABEL'")

        return PairedFiles(read_pair_list(list_file, base, no_single_names), NYU40_CLASSES)
    raise UserError(f"data.root: {base} holds neither form of NYUDv2 (expected {layout})")


class SyntheticScenes(Dataset):
    """Deterministic scenes of shapes on a textured background, for tests and quick runs.

    Each image holds 3-7 objects (disc, square, triangle, cross, ring) in random colours,
    sizes from a few pixels to a third of the image. The class is the shape, not the
    colour, so small objects need resolution: downsizing the input blurs them away.
    """

    classes = ("background", "disc", "square", "triangle", "cross", "ring")

    def __init__(self, size: int, image_size: int = 64, seed: int = 0) -> None:
        self.size, self.image_size, self.seed = size, image_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        n = self.image_size
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
        texture = 0.5 + 0.5 * np.sin(xx / rng.uniform(2, 6) + rng.uniform(0, 6)) * np.sin(yy / rng.uniform(2, 6))
        image = rng.uniform(0.1, 0.6, size=3) * (0.6 + 0.4 * texture[..., None]) + rng.normal(0, 0.05, size=(n, n, 3))
        mask = np.zeros((n, n), dtype=np.int64)
        for _ in range(int(rng.integers(3, 8))):
            label = int(rng.integers(1, len(self.classes)))
            radius = n * rng.choice([0.05, 0.1, 0.18, 0.3]) * rng.uniform(0.8, 1.2)
            cy, cx = rng.uniform(0, n, size=2)
            inside = self._shape(label, (xx - cx) / radius, (yy - cy) / radius, rng.uniform(0, np.pi))
            image[inside] = rng.uniform(0.3, 1.0, size=3)
            mask[inside] = label
        return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask

    @staticmethod
    def _shape(label: int, x: np.ndarray, y: np.ndarray, angle: float) -> np.ndarray:
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        r = np.hypot(u, v)
        if label == 1:
            return r <= 1
        if label == 2:
            return np.maximum(abs(u), abs(v)) <= 0.8
        if label == 3:
            return (v >= -0.5) & (v <= 1 - 1.7 * abs(u))
        if label == 4:
            return (np.minimum(abs(u), abs(v)) <= 0.3) & (np.maximum(abs(u), abs(v)) <= 1)
        return (r <= 1) & (r >= 0.55)


@register_dataset("synthetic_seg")
def synthetic_seg(
    *, root: str | None = None, split: str = "train", train_size: int = 1000, val_size: int = 200, image_size: int = 64, seed: int = 0
) -> Dataset:
    """Built-in segmentation data, generated on the fly: 5 shapes + background, no files."""
    check_split(split)
    size = train_size if split == "train" else val_size
    return SyntheticScenes(size, image_size, seed=split_seed(seed, split))


#: The task whose samples they give: a recipe of another task is refused when validated.
for _builder in (segfolder, nyudv2, synthetic_seg):
    _builder.task = "seg"
