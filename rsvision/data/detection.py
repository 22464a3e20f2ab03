"""Object detection and instance segmentation data: COCO-format files, a synthetic set, and
Fashion-MNIST items on a canvas (real images, offline).

A sample is ``(image, target)``: ``image`` a ``uint8`` tensor ``[C, H, W]``; ``target`` a dict
of ``boxes`` (``float32 [N, 4]``, ``x1, y1, x2, y2`` in pixels), ``labels`` (``int64 [N]``,
1..K; 0 is torchvision's background), ``iscrowd`` (``uint8 [N]``: crowd regions, which COCO's
evaluation ignores and training leaves out), ``masks`` (``uint8 [N, H, W]``, when asked for)
and ``image_id``. ``classes`` names the K object classes in label order.

The COCO reader checks every image and annotation entry when the dataset is built, so a
broken file fails before training, with one line naming the file and the annotation id. The
label space is the training file's: a validation file's categories are mapped to it by id,
and its class names are the training file's. Each image is decoded upright (its EXIF
orientation applied, :func:`~rsvision.data.datasets.read_rgb`) and its size checked against
the file's ``width`` and ``height`` when it is read (docs/detection.md, "What is checked").
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rsvision.constants import check_split, split_seed
from rsvision.data.datasets import read_rgb
from rsvision.data.transforms import InputFormat
from rsvision.errors import UserError
from rsvision.registry import register_dataset


def boxes_of_masks(masks: np.ndarray) -> np.ndarray:
    """The tight ``x1, y1, x2, y2`` box of each ``[N, H, W]`` mask (pixel edges: x2 = last column + 1)."""
    out = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


def make_target(boxes, labels, masks=None, iscrowd=None, image_id: int = 0) -> dict[str, Any]:
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    target = {
        "boxes": boxes,
        "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
        "iscrowd": torch.zeros(len(boxes), dtype=torch.uint8) if iscrowd is None else torch.as_tensor(np.asarray(iscrowd, dtype=np.uint8)),
        "image_id": int(image_id),
    }
    if masks is not None:
        target["masks"] = torch.as_tensor(np.asarray(masks, dtype=np.uint8))
    return target


# --- COCO -------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: What a COCO image whose decoded size differs from its entry's ``width`` x ``height`` does:
#: ``error`` refuses it (naming the file and both sizes), ``rescale`` scales its boxes and masks
#: to the decoded image (``data.args.size_mismatch``).
SIZE_MISMATCH = ("error", "rescale")


def _read_json(annotation_file: Path) -> dict:
    try:
        data = json.loads(annotation_file.read_text())
    except FileNotFoundError:
        raise UserError(f"{annotation_file}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{annotation_file}: not a JSON file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise UserError(f"{annotation_file}: expected a COCO object with lists 'images', 'annotations' and 'categories'")
    return data


def _categories(data: dict, annotation_file: Path) -> list[tuple[int, str]]:
    """``(id, name)`` of each category, sorted by id: label ``i + 1`` is the ``i``-th."""
    out = []
    for c in data["categories"]:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise UserError(f"{annotation_file}: category {c.get('id') if isinstance(c, dict) else c!r}: expected an integer 'id' and a string 'name'")
        out.append((c["id"], c["name"]))
    return sorted(out)


#: The categories of training files read in this process, by (path, modification time, size):
#: the validation split takes its label space from them without reading the file again.
_TRAINING_CATEGORIES: dict[tuple[str, int, int], list[tuple[int, str]]] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def training_categories(annotation_file: Path) -> list[tuple[int, str]]:
    """The sorted ``(id, name)`` categories of a training file (kept once read)."""
    key = _file_key(annotation_file)
    if key not in _TRAINING_CATEGORIES:
        _TRAINING_CATEGORIES[key] = _categories(_read_json(annotation_file), annotation_file)
    return _TRAINING_CATEGORIES[key]


class CocoDetection(Dataset):
    """``instances_*.json`` and its image folder (see the module docstring).

    ``label_space``: the training file and its categories, when this is another split's file;
    its categories are then mapped to the training file's labels by id.
    """

    def __init__(
        self, annotation_file: Path, image_dir: Path, masks: bool = True, size_mismatch: str = "error",
        label_space: tuple[Path, list[tuple[int, str]]] | None = None,
    ) -> None:
        self.file, self.image_dir, self.masks, self.size_mismatch = annotation_file, image_dir, masks, size_mismatch
        data = _read_json(annotation_file)
        own = _categories(data, annotation_file)
        categories = own if label_space is None else self._mapped(own, *label_space)
        if label_space is None:
            _TRAINING_CATEGORIES[_file_key(annotation_file)] = own
        self.classes = [name for _, name in categories]
        self.label_of = {cid: i + 1 for i, (cid, _) in enumerate(categories)}
        self.images = [self._image(entry) for entry in data["images"]]
        if not self.images:
            raise UserError(f"{annotation_file}: no images (its 'images' list is empty): nothing to train or evaluate on")
        self._check_unique_ids()
        self.annotations: dict[int, list[dict]] = {img["id"]: [] for img in self.images}
        for ann in data["annotations"]:
            self.annotations[self._check_annotation(ann)].append(ann)

    def _mapped(self, own: list[tuple[int, str]], training_file: Path, training: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """The training file's categories, after checking this file's against them by id."""
        names = dict(training)
        unknown = [f"{cid} '{name}'" for cid, name in own if cid not in names]
        if unknown:
            raise self._fail("categories", f"{', '.join(unknown)} not in the training file {training_file} (its categories: {', '.join(f'{c} {n!r}' for c, n in training)})")
        renamed = [f"{cid} is '{name}' here, '{names[cid]}' there" for cid, name in own if names[cid] != name]
        if renamed:
            raise self._fail("categories", f"named otherwise than in the training file {training_file}: {'; '.join(renamed)}")
        return training

    def _check_unique_ids(self) -> None:
        seen: dict[int, str] = {}
        for entry in self.images:
            if entry["id"] in seen:
                raise self._fail(f"image id {entry['id']}", f"given to two images, {seen[entry['id']]} and {entry['file_name']} (merged files? give each image its own id)")
            seen[entry["id"]] = entry["file_name"]

    def _fail(self, what: str, problem: str) -> UserError:
        return UserError(f"{self.file}: {what}: {problem}")

    def _image(self, entry: Any) -> dict:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise self._fail("image entry", f"expected an integer 'id', got {entry!r:.80}")
        for key in ("file_name", "width", "height"):
            if key not in entry:
                raise self._fail(f"image id {entry['id']}", f"missing '{key}'")
        for key in ("width", "height"):
            if not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] <= 0:
                raise self._fail(f"image id {entry['id']}", f"'{key}' must be a positive integer, got {entry[key]!r:.40}")
        return entry

    def _check_annotation(self, ann: Any) -> int:
        """The annotation's image id, after checking its fields (one line naming its id)."""
        if not isinstance(ann, dict) or not isinstance(ann.get("id"), int):
            raise self._fail("annotation", f"expected an integer 'id', got {ann!r:.80}")
        what = f"annotation id {ann['id']}"
        if ann.get("image_id") not in self.annotations:
            raise self._fail(what, f"image_id {ann.get('image_id')!r} is not an image of this file")
        if ann.get("category_id") not in self.label_of:
            raise self._fail(what, f"category_id {ann.get('category_id')!r} is not a category of this file")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            raise self._fail(what, f"bbox must be [x, y, width, height], got {box!r:.80}")
        if box[2] < 0 or box[3] < 0:
            raise self._fail(what, f"bbox has a negative width or height: {box}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise self._fail(what, f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
        if self.masks:
            self._check_segmentation(ann, what)
        return ann["image_id"]

    def _check_segmentation(self, ann: dict, what: str) -> None:
        seg = ann.get("segmentation")
        if seg == []:
            raise self._fail(what, "segmentation is empty (a box-only file, as CVAT and Roboflow export): read it with data.args.masks: false (boxes only; Faster R-CNN)")
        if isinstance(seg, list):
            if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p)) for p in seg):
                raise self._fail(what, "segmentation polygons must be lists of at least 3 x, y pairs")
        elif isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
                raise self._fail(what, f"RLE segmentation needs 'size' [height, width], got {size!r:.40}")
            if not isinstance(counts, (str, list)):
                raise self._fail(what, "RLE segmentation needs 'counts' (a string or a list of run lengths)")
            if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
                raise self._fail(what, f"RLE run lengths add up to {sum(counts)}, not height x width = {size[0] * size[1]}")
        else:
            raise self._fail(what, "segmentation missing: expected polygons or RLE (or read the file with data.args.masks: false)")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        entry = self.images[index]
        path = self.image_dir / entry["file_name"]
        if not path.is_file():
            raise UserError(f"{path}: image id {entry['id']} of {self.file} not found")
        image = np.asarray(read_rgb(path))
        h, w = image.shape[:2]
        sx, sy = self._scale(entry, path, w, h)
        boxes, labels, crowd, masks = [], [], [], []
        for ann in self.annotations[entry["id"]]:
            x, y, bw, bh = ann["bbox"]
            x, y, bw, bh = x * sx, y * sy, bw * sx, bh * sy
            x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
            if x2 <= x1 or y2 <= y1:  # degenerate once clipped: dropped, as torchvision's references do
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(self.label_of[ann["category_id"]])
            crowd.append(ann.get("iscrowd", 0))
            if self.masks:
                masks.append(self._mask(ann, entry["height"], entry["width"], h, w))
        mask_array = np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)
        target = make_target(boxes, labels, mask_array if self.masks else None, crowd, entry["id"])
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), target

    def _scale(self, entry: dict, path: Path, w: int, h: int) -> tuple[float, float]:
        """``(x, y)`` factors from the file's coordinates to the decoded image's: 1 when the sizes
        agree; a mismatch is refused unless ``size_mismatch`` is ``rescale``."""
        width, height = entry["width"], entry["height"]
        if (w, h) == (width, height):
            return 1.0, 1.0
        if self.size_mismatch == "rescale":
            return w / width, h / height
        turned = " (the same size turned: labelled on the stored frame, without the EXIF orientation?)" if (w, h) == (height, width) else ""
        raise UserError(
            f"{path}: decodes to {w}x{h} (EXIF orientation applied), but image id {entry['id']} of {self.file} "
            f"is {width}x{height}{turned}; data.args.size_mismatch: rescale scales its boxes and masks to the image"
        )

    def _mask(self, ann: dict, height: int, width: int, h: int, w: int) -> np.ndarray:
        """The annotation's mask, drawn at the file's ``height`` x ``width``, resized (nearest) to the
        decoded ``h`` x ``w`` when they differ."""
        from pycocotools import mask as coco_mask

        seg = ann["segmentation"]
        try:
            if isinstance(seg, list):
                rle = coco_mask.merge(coco_mask.frPyObjects(seg, height, width))
            elif isinstance(seg["counts"], list):
                rle = coco_mask.frPyObjects(seg, *seg["size"])
            else:
                rle = {"size": seg["size"], "counts": seg["counts"].encode()}
            mask = coco_mask.decode(rle)
        except Exception as exc:  # pycocotools raises bare exceptions on malformed RLE strings
            raise self._fail(f"annotation id {ann['id']}", f"cannot decode its segmentation ({exc})") from None
        if mask.shape != (height, width):
            raise self._fail(f"annotation id {ann['id']}", f"mask is {mask.shape[0]}x{mask.shape[1]}, its image {height}x{width}")
        if (h, w) != (height, width):
            import cv2

            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return mask


def _annotation_file(folder: Path, split: str, annotations: str | None) -> Path:
    if annotations is not None:
        return folder / annotations.format(split=split)
    found = sorted((folder / "annotations").glob(f"instances_{split}*.json"))
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(p.name for p in found)})"
        raise UserError(f"{folder / 'annotations'}: {what} matching instances_{split}*.json; name it with data.args.annotations")
    return found[0]


@register_dataset("coco")
def coco(
    *, root: str | None = None, split: str = "train", annotations: str | None = None, images: str | None = None,
    masks: bool = True, size_mismatch: str = "error",
) -> Dataset:
    """COCO-format data under ``root``: ``annotations/instances_<name>.json`` and the image
    folder ``<name>/``, where ``<name>`` is the split (``train``/``val``) or the one file
    ``instances_<split>*.json`` (``instances_val2017.json`` → ``val2017/``). ``annotations`` and
    ``images`` (paths relative to ``root``, ``{split}`` replaced) name them explicitly.

    The validation split takes the training file's label space (categories mapped by id; a
    validation folder without a training file keeps its own). ``masks: false`` reads boxes
    only (no segmentation needed); ``size_mismatch`` (:data:`SIZE_MISMATCH`) says what an image
    whose decoded size differs from its entry does."""
    check_split(split)
    if root is None:
        raise UserError("data.root: the coco dataset needs the folder holding annotations/ and the image folders")
    if size_mismatch not in SIZE_MISMATCH:
        raise UserError(f"data.args.size_mismatch: expected one of {', '.join(SIZE_MISMATCH)}, got {size_mismatch!r}")
    folder = Path(root).expanduser()
    annotation_file = _annotation_file(folder, split, annotations)
    image_dir = folder / (images.format(split=split) if images else annotation_file.stem.removeprefix("instances_"))
    label_space = None
    if split != "train":
        try:
            training_file = _annotation_file(folder, "train", annotations)
        except UserError:  # no training file here (a validation folder alone): its own categories
            training_file = None
        if training_file is not None and training_file.is_file() and training_file != annotation_file:
            label_space = (training_file, training_categories(training_file))
    return CocoDetection(annotation_file, image_dir, masks, size_mismatch, label_space)


# --- generated data ---------------------------------------------------------------------


class PlacedItems(Dataset):
    """Canvases holding 1..``max_items`` items, each a grey or colour patch with its mask.

    ``item(rng)`` returns ``(mask [h, w] bool, label, texture [h, w] float in [0, 1])``;
    items are placed at random positions, later items on top (earlier masks lose the
    covered pixels; an item covered entirely is dropped).
    """

    def __init__(self, size: int, canvas: int, seed: int, max_items: int, channels: int, classes: list[str], item) -> None:
        self.size, self.canvas, self.seed, self.max_items = size, canvas, seed, max_items
        self.channels, self.classes, self.item = channels, classes, item

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        c = self.canvas
        image = np.zeros((c, c, self.channels), np.float32) + rng.uniform(0.0, 0.2, self.channels)
        masks, labels = [], []
        for _ in range(int(rng.integers(1, self.max_items + 1))):
            shape, label, texture = self.item(rng)
            h, w = shape.shape
            y, x = int(rng.integers(0, c - h + 1)), int(rng.integers(0, c - w + 1))
            full = np.zeros((c, c), bool)
            full[y : y + h, x : x + w] = shape
            colour = rng.uniform(0.5, 1.0, self.channels) if self.channels > 1 else np.ones(1)
            image[full] = texture[shape][:, None] * colour
            masks = [m & ~full for m in masks]
            masks.append(full)
            labels.append(label)
        keep = [i for i, m in enumerate(masks) if m.any()]
        masks_array = np.stack([masks[i] for i in keep]).astype(np.uint8)
        target = make_target(boxes_of_masks(masks_array), [labels[i] for i in keep], masks_array, image_id=index)
        pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), target


SHAPES = ("square", "disc", "triangle")


def _shape_item(rng: np.random.Generator, *, low: int, high: int):
    """A filled square, disc or triangle of side ``low..high`` pixels."""
    kind = int(rng.integers(len(SHAPES)))
    side = int(rng.integers(low, high + 1))
    v, u = np.mgrid[0:side, 0:side] + 0.5
    if kind == 0:
        mask = np.ones((side, side), bool)
    elif kind == 1:
        mask = (u - side / 2) ** 2 + (v - side / 2) ** 2 <= (side / 2) ** 2
    else:
        mask = np.abs(u - side / 2) <= v / 2
    return mask, kind + 1, np.ones((side, side), np.float32)


@register_dataset("synthetic_det")
def synthetic_det(*, root: str | None = None, split: str = "train", train_size: int = 256, val_size: int = 64, canvas: int = 128, min_item: int = 12, max_item: int = 48, max_items: int = 3, seed: int = 0) -> Dataset:
    """Squares, discs and triangles on a ``canvas`` x ``canvas`` colour image (3 classes); the
    train and val splits never share an image."""
    check_split(split)
    if not 1 <= min_item <= max_item <= canvas:
        raise UserError(f"data.args: expected 1 <= min_item <= max_item <= canvas, got {min_item}, {max_item}, {canvas}")
    size = train_size if split == "train" else val_size
    return PlacedItems(size, canvas, split_seed(seed, split), max_items, 3, list(SHAPES), partial(_shape_item, low=min_item, high=max_item))


def _fashion_item(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, scales: tuple[float, float]):
    """One Fashion-MNIST item resized by a random factor in ``scales``; its mask: pixels above 10 % of its maximum."""
    import cv2

    i = int(rng.integers(len(images)))
    side = max(4, round(28 * rng.uniform(*scales)))
    item = cv2.resize(images[i], (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    mask = item > 0.1 * max(float(item.max()), 1e-6)
    if not mask.any():
        mask[side // 2, side // 2] = True
    return mask, int(labels[i]) + 1, item


@register_dataset("fashion_canvas")
def fashion_canvas(*, root: str | None = None, split: str = "train", train_size: int = 2000, val_size: int = 500, canvas: int = 128, scales: tuple[float, float] = (0.75, 3.0), max_items: int = 3, seed: int = 0) -> Dataset:
    """Real grey images: Fashion-MNIST items (10 classes) placed on a ``canvas`` x ``canvas``
    image at scales ``scales`` (28 px times 0.75..3 by default), boxes and masks from the
    item's pixels. ``root`` holds the MNIST-format files (``apt-get install
    dataset-fashion-mnist``); train canvases use the training file, val the test file."""
    from rsvision.data.idx import CLASS_NAMES, FILES, _find, read_idx

    check_split(split)
    if root is None:
        raise UserError("data.root: fashion_canvas needs the folder holding the Fashion-MNIST IDX files")
    low, high = scales
    if not 0 < low <= high or round(28 * high) > canvas:
        raise UserError(f"data.args.scales: expected 0 < low <= high with 28 x high <= canvas ({canvas}), got {list(scales)}")
    folder = Path(root).expanduser()
    image_path, label_path = (_find(folder, name) for name in FILES[split])
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    size = train_size if split == "train" else val_size
    return PlacedItems(size, canvas, split_seed(seed, split), max_items, 1, list(CLASS_NAMES["fashion"]), partial(_fashion_item, images, labels, scales=(low, high)))


# --- transforms -------------------------------------------------------------------------


def hflip(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The image mirrored left to right, with its boxes and masks."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class DetectionTrainTransform:
    """``(image, target)`` → ``{"image": [C, H, W] float in [0, 1], "target": ...}``: the image at
    its own size (the detector's transform resizes it to each sub-network's), flipped with
    probability ``flip``, crowd regions left out of the target (COCO trains without them)."""

    def __init__(self, channels: int, flip: float = 0.5, masks: bool = False) -> None:
        self.channels, self.flip, self.masks = channels, flip, masks

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> dict[str, Any]:
        if self.flip and float(torch.rand(())) < self.flip:
            image, target = hflip(image, target)
        keep = target["iscrowd"] == 0
        out = {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}
        if self.masks:
            if "masks" not in target:
                raise UserError(f"image id {target['image_id']}: Mask R-CNN needs masks, and this dataset gives none")
            out["masks"] = target["masks"][keep]
        return {"image": float_image(image, self.channels), "target": out}


class DetectionEvalTransform:
    """``(image, target)`` → ``{"images": [the image, once per evaluated size], "target": ...}``
    (one decode; the detector resizes it to each size and maps its boxes back)."""

    def __init__(self, channels: int, sizes: int) -> None:
        self.channels, self.sizes = channels, sizes

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> dict[str, Any]:
        x = float_image(image, self.channels)
        return {"images": [x] * self.sizes, "target": target}


def float_image(image, channels: int) -> torch.Tensor:
    """Any image as the ``[C, H, W]`` float tensor in [0, 1] a detector takes (it resizes and normalises itself)."""
    return InputFormat(channels, None, None).tensor(image)


#: The task whose samples they give: a recipe of another task is refused when validated.
for _builder in (coco, synthetic_det, fashion_canvas):
    _builder.task = "det"
