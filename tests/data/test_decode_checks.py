"""The one image decoder: EXIF orientation applied, pixel counts bounded, empty class folders named."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from deploy_fixtures import cls_run
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import rsvision
from rsvision.data import datasets
from rsvision.data.datasets import imagefolder, read_image, read_rgb
from rsvision.errors import UserError

ORIENTATION = 0x0112


def sideways_jpeg(path, orientation: int, h: int = 24, w: int = 40) -> np.ndarray:
    """A JPEG stored ``h`` x ``w`` with the EXIF orientation tag; returns the upright pixels
    (what a phone shows), decoded by Pillow and turned by hand: orientation 6 asks for a
    quarter turn clockwise, 8 for one counter-clockwise."""
    yy, xx = np.mgrid[0:h, 0:w]
    stored = np.stack([xx * 150 // w, yy * 150 // h, np.zeros_like(xx)], -1).astype(np.uint8)  # ramps that tell the turns apart
    stored[:8, :8] = 255  # a white corner, top left as stored
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    return np.rot90(pixels, k=-1 if orientation == 6 else 1)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied_by_both_readers(tmp_path, orientation):
    path = tmp_path / "phone.jpg"
    upright = sideways_jpeg(path, orientation)
    image = np.asarray(read_rgb(path))
    assert image.shape == (40, 24, 3) and np.array_equal(image, upright)
    corner = image[:8, -8:] if orientation == 6 else image[-8:, :8]  # the stored top-left corner, turned
    assert corner.min() > 200
    assert torch.equal(read_image(path), pil_to_tensor(read_rgb(path)))


def test_load_predicts_a_sideways_photo_upright(tmp_path_factory, tmp_path):
    path = tmp_path / "phone.jpg"
    upright = sideways_jpeg(path, 6)
    model = rsvision.load(cls_run(tmp_path_factory))
    assert torch.equal(model.preprocess(path, 16), model.preprocess(np.ascontiguousarray(upright), 16))


def test_an_image_over_the_pixel_limit_is_named_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(datasets, "MAX_PIXELS", 1000)
    for name, read in (("big.png", read_rgb), ("big.jpg", read_image)):
        with pytest.raises(UserError, match=rf"{name}: a 30x40 image \(0.0 Mpixel\) is over the limit of 0.001 Mpixel"):
            read(tmp_path / name)


def test_pillows_decompression_bomb_error_names_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice this
    with pytest.raises(UserError, match=r"bomb\.png: too many pixels to decode \(Image size \(1200 pixels\)"):
        read_rgb(tmp_path / "bomb.png")


def _png_header(path, width: int, height: int) -> None:
    """A PNG file that declares ``width`` x ``height`` RGB pixels and holds none (the header is all a size check reads)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_200_megapixel_photo_given_to_predict_is_named(tmp_path_factory, tmp_path):
    path = tmp_path / "pano.png"
    _png_header(path, 16320, 12240)  # a 200 Mpixel phone photo's size
    with pytest.raises(UserError, match=r"pano\.png: too many pixels to decode \(Image size \(199756800 pixels\)"):
        rsvision.load(cls_run(tmp_path_factory)).predict(path)


def test_an_empty_class_folder_is_named(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "cat" / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "val" / "cat" / "a.png")
    with pytest.raises(UserError, match=r"train/dog: class folder with no images \(\.jpg"):
        imagefolder(root=str(tmp_path), split="train")
    assert len(imagefolder(root=str(tmp_path), split="val")) == 1  # a validation folder may lack a class
    (tmp_path / "val" / "cat" / "a.png").unlink()
    with pytest.raises(UserError, match=r"val: no images in any class folder"):
        imagefolder(root=str(tmp_path), split="val")
