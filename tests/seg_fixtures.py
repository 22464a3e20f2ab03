"""Tiny on-disk segmentation datasets written by tests: NYUDv2 (.mat and folder forms), segfolder."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
from PIL import Image

# Raw NYU labels 1..6 map to 40-class ids (1-based) through mapClass; raw 0 is unlabelled.
MAP_CLASS = np.array([[1, 2, 5, 40, 12, 2]])


def nyu_images(n: int = 5, height: int = 24, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RGB images [n, H, W, 3] and raw label maps [n, H, W] (values 0..6), deterministic."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    raw = np.zeros((n, height, width), dtype=np.uint16)
    for i in range(n):
        raw[i, : height // 2, : width // 2] = 1 + i % 6
        raw[i, height // 2 :, width // 2 :] = 1 + (i + 2) % 6
        raw[i, height // 2 :, : width // 2] = 3
    return images, raw


def nyu_to_40(raw: np.ndarray) -> np.ndarray:
    """The expected 0..39 / 255 labels of raw labels under MAP_CLASS."""
    lookup = np.concatenate([[255], MAP_CLASS.reshape(-1) - 1])
    return lookup[raw]


def write_nyu_mat(root: Path, n: int = 5, train=(1, 2, 4), test=(3, 5)) -> tuple[np.ndarray, np.ndarray]:
    """The official layout: MATLAB's column-major arrays as h5py sees them ([N, 3, W, H])."""
    root.mkdir(parents=True, exist_ok=True)
    images, raw = nyu_images(n)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = images.transpose(0, 3, 2, 1)
        f["labels"] = raw.transpose(0, 2, 1)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array(train)[:, None], "testNdxs": np.array(test)[:, None]})
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": MAP_CLASS})
    return images, raw


def write_nyu_folder(root: Path, n: int = 5, train=(0, 1, 3), val=(2, 4)) -> tuple[np.ndarray, np.ndarray]:
    """The LW-RefineNet layout: PNGs plus train.nyu / val.nyu (image<TAB>label per line)."""
    images, raw = nyu_images(n)
    labels = nyu_to_40(raw).astype(np.uint8)
    for sub in ("train_images", "train_labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(images[i]).save(root / "train_images" / f"{i:06d}.png")
        Image.fromarray(labels[i]).save(root / "train_labels" / f"{i:06d}.png")
    for split, ids in (("train", train), ("val", val)):
        lines = [f"train_images/{i:06d}.png\ttrain_labels/{i:06d}.png" for i in ids]
        (root / f"{split}.nyu").write_text("\n".join(lines) + "\n")
    return images, labels


def write_segfolder(root: Path, sizes=((20, 30), (24, 16)), classes=("bg", "a", "b")) -> list[tuple[np.ndarray, np.ndarray]]:
    """``images/``, ``masks/``, ``train.txt``, ``val.txt``, ``classes.yaml``; one image per size."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    samples = []
    for i, (h, w) in enumerate(sizes):
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, len(classes), size=(h, w)).astype(np.uint8)
        mask[0, :] = 255
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
        samples.append((image, mask))
    names = [f"s{i}" for i in range(len(sizes))]
    (root / "train.txt").write_text("\n".join(names) + "\n")
    (root / "val.txt").write_text("\n".join(f"{n}.png" for n in names) + "\n")
    (root / "classes.yaml").write_text("".join(f"- {c}\n" for c in classes))
    return samples
