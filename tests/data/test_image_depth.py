"""16-bit and float images decode to the [0, 1] range of their 8-bit twin wherever an image enters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_fixtures import cls_run, seg_run
from PIL import Image

import rsvision
from rsvision.data.datasets import imagefolder, read_rgb
from rsvision.data.transforms import InputFormat, eight_bit
from rsvision.deploy.masks import predict_files


def _twins(tmp_path, h=30, w=40, seed=0):
    """An 8-bit grey PNG and a 16-bit one whose values round to it (v * 257 plus at most 128)."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    sixteen = (grey.astype(np.uint16) * 257 + rng.integers(0, 129, (h, w)).astype(np.uint16) * (grey < 255)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey8.png")
    Image.fromarray(sixteen).save(tmp_path / "grey16.png")
    return tmp_path / "grey8.png", tmp_path / "grey16.png", grey, sixteen


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_every_non_8_bit_mode_gives_the_8_bit_values(tmp_path, mode):
    _, _, grey, sixteen = _twins(tmp_path)
    if mode == "F":
        image = Image.fromarray(grey.astype(np.float32) / 255, mode="F")
    elif mode == "I;16B":  # as PIL opens a big-endian TIFF
        image = Image.frombytes(mode, grey.shape[::-1], sixteen.astype(">u2").tobytes())
    else:
        image = Image.fromarray(sixteen).convert(mode)
    assert image.mode == mode
    decoded = eight_bit(image)
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), grey)
    assert torch.equal(InputFormat().image(image), torch.from_numpy(grey).expand(3, -1, -1))
    assert np.array_equal(eight_bit(sixteen), grey) and eight_bit(grey) is grey


def test_16_bit_files_read_like_their_twin_in_image_folders(tmp_path):
    path8, path16, grey, _ = _twins(tmp_path)
    assert read_rgb(path16).mode == "RGB" and np.array_equal(np.asarray(read_rgb(path16)), np.asarray(read_rgb(path8)))
    for split in ("train", "val"):
        (tmp_path / "data" / split / "a").mkdir(parents=True)
        Image.open(path16).save(tmp_path / "data" / split / "a" / "x.png")
    image, label = imagefolder(root=str(tmp_path / "data"), split="val")[0]
    assert label == 0 and image.shape == (3, *grey.shape) and np.array_equal(image[0].numpy(), grey)  # a 3xHxW tensor


def test_load_predicts_a_16_bit_png_as_its_8_bit_twin(tmp_path_factory, tmp_path):
    path8, path16, _, sixteen = _twins(tmp_path)
    model = rsvision.load(cls_run(tmp_path_factory))
    for r in (16, 8):
        expected = model.preprocess(path8, r)
        for image in (path16, str(path16), Image.open(path16), sixteen):
            assert torch.equal(model.preprocess(image, r), expected)
    assert model.predict([path16, sixteen]) == [model.predict(path8)] * 2


def test_predict_command_writes_the_same_masks_and_panel_for_a_16_bit_png(tmp_path_factory, tmp_path):
    path8, path16, _, _ = _twins(tmp_path, 48, 56)
    run = seg_run(tmp_path_factory)
    written = [predict_files(run, [p], [64, 32], tmp_path / p.stem, compare=True) for p in (path8, path16)]
    for a, b in zip(*written):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), b.name
