"""Built-in classification datasets: ``synthetic``, ``imagefolder``, ``cifar10``, ``cifar100``.

A dataset builder is ``fn(*, root, split, **args)`` returning a map-style dataset of
``(RGB image, class index)`` with a ``classes`` attribute, the image a PIL image, an
``HxWx3`` array or a ``3xHxW`` uint8 tensor (``imagefolder``'s). Nothing is downloaded.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.functional import pil_to_tensor

from rsvision.constants import SPLITS, check_split, split_seed
from rsvision.data.transforms import eight_bit
from rsvision.errors import UserError
from rsvision.registry import register_dataset


class SyntheticShapes(Dataset):
    """Deterministic images whose class evidence fades step by step as they are downsized.

    Class = (shape: disc, square, triangle, ring or cross) x (mark: "+" or "x"). The shape
    is coarse evidence; the eight marks scattered around it are fine evidence: a "+" and an
    "x" of one size have the same ink and the same spread, so once downsizing blurs them
    into dots they look alike. Each image draws its mark size (half-length of an arm) and
    its shape's radius log-uniformly from ``mark_range`` and ``shape_range`` (fractions of
    the image side: 1 to 12 and 10 to 37 pixels at 144), so the lower the resolution, the
    more images lose their marks (a coin toss between two classes) and, at the lowest,
    the more small shapes blur into one another; marks and shapes near the limit still
    leave a faint trace. Place, angle and colours of the shape, the marks' places and
    colour, and pixel noise are random too; horizontal flips keep every class.
    """

    #: Every read of a sample gives the same image (``data.cache: auto`` may decode it once).
    fixed_samples = True
    shapes = ("disc", "square", "triangle", "ring", "cross")
    marks = ("plus", "x")
    mark_range = (1 / 144, 1 / 12)
    num_marks = 8
    shape_range = (0.07, 0.26)

    def __init__(self, size: int, image_size: int = 64, num_shapes: int = 5, seed: int = 0) -> None:
        self.size, self.image_size, self.seed = size, image_size, seed
        self.classes = [f"{s}_{m}" for s in self.shapes[:num_shapes] for m in self.marks]
        self._yy, self._xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.integers(len(self.classes)))
        shape, mark = divmod(label, len(self.marks))
        mark_size = float(np.exp(rng.uniform(*np.log(self.mark_range))))
        return Image.fromarray(self.draw(rng, shape, mark, mark_size)), label

    def draw(self, rng: np.random.Generator, shape: int, mark: int, mark_size: float) -> np.ndarray:
        """An ``image_size``-square uint8 RGB image; ``rng`` draws everything but the class
        and the mark size, in an order that does not depend on them."""
        n, yy, xx = self.image_size, self._yy, self._xx
        radius = n * float(np.exp(rng.uniform(*np.log(self.shape_range))))
        cy, cx = rng.uniform(0.4 * n, 0.6 * n, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        fg, bg = rng.uniform(0.35, 0.7, size=3), rng.uniform(0.0, 0.3, size=3)
        ink = bg + rng.uniform(0.6, 0.9)
        cos, sin = np.cos(angle) / radius, np.sin(angle) / radius
        u, v = (xx - cx) * cos + (yy - cy) * sin, (yy - cy) * cos - (xx - cx) * sin
        image = np.where(_SHAPES[shape](u, v)[..., None], fg, bg).astype(np.float32)
        arm = mark_size * n
        for my, mx in self._mark_places(rng, (cy, cx), radius, arm):
            lo_y, lo_x = int(my - arm - 2), int(mx - arm - 2)
            dy, dx = yy[lo_y : int(my + arm + 3), 0] - my, xx[0, lo_x : int(mx + arm + 3)] - mx
            cover = _mark_cover(dy[:, None], dx[None, :], arm, mark)[..., None]
            patch = image[lo_y : lo_y + len(dy), lo_x : lo_x + len(dx)]
            patch += cover * (ink - patch)
        image += 0.05 * rng.standard_normal((n, n, 3), dtype=np.float32)
        return (np.clip(image, 0, 1) * 255).astype(np.uint8)

    def _mark_places(self, rng: np.random.Generator, centre, radius: float, arm: float) -> list[tuple[float, float]]:
        """Up to ``num_marks`` centres off the shape and apart, inside the central crop."""
        n, places = self.image_size, []
        for _ in range(20 * self.num_marks):
            if len(places) == self.num_marks:
                break
            p = rng.uniform(0.1 * n + arm, 0.9 * n - arm, size=2)
            if np.hypot(*(p - centre)) > 1.2 * radius + arm + 1 and all(np.hypot(*(p - q)) > 2 * arm + 3 for q in places):
                places.append((float(p[0]), float(p[1])))
        return places


def _mark_cover(dy: np.ndarray, dx: np.ndarray, arm: float, mark: int) -> np.ndarray:
    """Ink coverage (0-1, antialiased) of a "+" (mark 0) or an "x" (mark 1) of arm ``arm``."""
    if mark == 1:
        dy, dx = (dy + dx) / np.sqrt(2), (dy - dx) / np.sqrt(2)
    along, across = np.maximum(abs(dy), abs(dx)), np.minimum(abs(dy), abs(dx))
    dist = np.hypot(np.maximum(along - arm, 0), across)
    return np.clip(0.22 * arm + 0.5 - dist, 0, 1)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.maximum(abs(u), abs(v)) <= 1) & (np.minimum(abs(u), abs(v)) <= 0.38)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sides = [u * np.cos(a) + v * np.sin(a) <= 0.6 for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    return sides[0] & sides[1] & sides[2]


_SHAPES = (
    lambda u, v: u**2 + v**2 <= 1,
    lambda u, v: np.maximum(abs(u), abs(v)) <= 0.85,
    _triangle,
    lambda u, v: (u**2 + v**2 <= 1) & (u**2 + v**2 >= 0.3),
    _cross,
)


@register_dataset("synthetic")
def synthetic(
    *, root: str | None = None, split: str = "train", train_size: int = 2000, val_size: int = 500, image_size: int = 64, num_classes: int = 10, seed: int = 0
) -> Dataset:
    """Built-in data, generated on the fly: no files, no download.

    ``num_classes`` (2 to 10, even) keeps the first ``num_classes / 2`` shapes, each with
    both marks.
    """
    check_split(split)
    if not 2 <= num_classes <= 10 or num_classes % 2:
        raise UserError(f"data.args.num_classes: the synthetic dataset has 2, 4, 6, 8 or 10 classes, got {num_classes}")
    size = train_size if split == "train" else val_size
    return SyntheticShapes(size, image_size, num_classes // 2, seed=split_seed(seed, split))


#: The most pixels an image file may hold: above the largest camera sensors (100-150 Mpixel)
#: and below Pillow's own refusal of a decompression bomb (2 x ``PIL.Image.MAX_IMAGE_PIXELS``,
#: 179 Mpixel), so an image over it is named with its size before any pixel is decoded; Pillow
#: refuses a larger one first, and its message is given with the file.
MAX_PIXELS = 160_000_000


def _open(path: str | Path, data: bytes | None = None) -> Image.Image:
    """The image file ``path`` (or its bytes ``data``) opened, its header read and no pixel
    decoded, its size checked against :data:`MAX_PIXELS`; an unreadable or oversized file is a
    one-line :class:`UserError` naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # bounded below by MAX_PIXELS
            img = Image.open(path if data is None else io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # a smaller PIL.Image.MAX_IMAGE_PIXELS set by the caller
        raise UserError(f"{path}: too many pixels to decode ({exc})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise UserError(f"{path}: a {width}x{height} image ({width * height / 1e6:.1f} Mpixel) is over the limit of {MAX_PIXELS / 1e6:g} Mpixel")
    return img


def read_rgb(path: str | Path) -> Image.Image:
    """An image file as 8-bit RGB in the frame it is shown in: its EXIF orientation applied
    (Pillow's ``ImageOps.exif_transpose``: a phone's portrait photo, stored sideways, comes out
    upright), grey, palette, 16-bit and float images converted (see
    :func:`~rsvision.data.transforms.eight_bit`). The one decoder of image files: datasets,
    ``predict`` and :func:`rsvision.load` read through it. A file over :data:`MAX_PIXELS`, or
    unreadable, is a one-line :class:`UserError` naming it."""
    with _open(path) as img:
        try:
            ImageOps.exif_transpose(img, in_place=True)
            return eight_bit(img).convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
            raise UserError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None


#: The first bytes of every JPEG file (start of image, then a marker).
_JPEG_START = b"\xff\xd8\xff"


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as a ``3xHxW`` uint8 RGB tensor with the pixels of :func:`read_rgb`.

    Colour and grey JPEGs are decoded by torchvision into the tensor (libjpeg-turbo, the
    decoder Pillow uses, so the same pixels; the EXIF orientation applied as Pillow does): a
    training sample of a 500x375 JPEG then costs 0.5-0.9 ms less CPU than through Pillow's
    image object and its copies, about 4 ms (docs/benchmarks.md, "Loader cost"). Pillow reads
    the header first (about 0.1 ms), so the pixel limit holds here too. Other files, and JPEGs
    torchvision refuses (CMYK, damaged), go through :func:`read_rgb`, which names a file it
    cannot read either.
    """
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    except OSError:
        data = bytearray()
    if data[:3] == _JPEG_START:
        _open(path, data).close()  # the size, from the header
        try:
            x = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
        except RuntimeError:
            x = None
        if x is not None and x.shape[0] in (1, 3):
            return x.expand(3, -1, -1) if x.shape[0] == 1 else x
    return pil_to_tensor(read_rgb(path))


class ClassListFolder(ImageFolder):
    """An image folder whose class indices come from a given class list (the training split's)."""

    #: Every read of a file gives the same image (``data.cache: auto`` may decode it once).
    fixed_samples = True

    def __init__(self, folder: Path, classes: list[str]) -> None:
        self.class_list = list(classes)
        super().__init__(str(folder), loader=read_image, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return list(self.class_list), {c: i for i, c in enumerate(self.class_list)}


@register_dataset("imagefolder")
def imagefolder(*, root: str | None = None, split: str = "train") -> Dataset:
    """``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg`` (torchvision's layout); for
    ``train``, also ``root/<class>/*.jpg`` (one folder, split by ``data.val_split``).

    Class indices follow the sorted class folders of ``train/`` for both splits, so a
    validation folder lacking a class keeps the others' indices; a validation class that
    training does not have, a training class folder with no images and a split with no
    images at all are errors naming the folder.
    """
    check_split(split)
    if root is None:
        raise UserError("data.root: the imagefolder dataset needs a root folder holding train/ and val/")
    base = Path(root).expanduser()
    folders = {s: base / s for s in SPLITS}
    if split == "train" and not folders["train"].is_dir() and base.is_dir() and not folders["val"].is_dir():
        folders["train"] = base  # one folder of class folders: data.val_split holds out its validation part
    for s in {"train", split}:
        if not folders[s].is_dir():
            raise UserError(
                f"{folders[s]}: folder not found (imagefolder expects {root}/train and {root}/val; "
                "with one folder, set data.val_split to hold out a validation part)"
            )
    try:
        classes, _ = find_classes(str(folders["train"]))
        extra = sorted(set(find_classes(str(folders[split]))[0]) - set(classes))
    except FileNotFoundError as exc:
        raise UserError(f"{base}: {exc}") from None
    if extra:
        raise UserError(f"{folders[split]}: class folder(s) {', '.join(extra)} do not exist in {folders['train']} (training classes: {', '.join(classes)})")
    try:
        dataset = ClassListFolder(folders[split], classes)
    except FileNotFoundError as exc:
        raise UserError(f"{folders[split]}: {exc}") from None
    found = set(dataset.targets)
    if split == "train" and len(found) < len(classes):
        empty = [str(folders["train"] / c) for i, c in enumerate(classes) if i not in found]
        raise UserError(f"{', '.join(empty)}: class folder with no images ({', '.join(IMG_EXTENSIONS)})")
    if not found:
        raise UserError(f"{folders[split]}: no images in any class folder ({', '.join(IMG_EXTENSIONS)})")
    return dataset


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
    ds.fixed_samples = ds.in_memory = True  # images held in memory, the same on every read
    return ds


@register_dataset("cifar10")
def cifar10(*, root: str | None = None, split: str = "train") -> Dataset:
    return _cifar("CIFAR10", root, split)


@register_dataset("cifar100")
def cifar100(*, root: str | None = None, split: str = "train") -> Dataset:
    return _cifar("CIFAR100", root, split)


#: The task whose samples they give: a recipe of another task is refused when validated.
for _builder in (synthetic, imagefolder, cifar10, cifar100):
    _builder.task = "cls"
