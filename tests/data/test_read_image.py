"""The image folder's reader: JPEGs decoded straight into tensors, with Pillow's pixels."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from rsvision.data.datasets import imagefolder, read_image, read_rgb
from rsvision.data.transforms import MultiResolutionTransform
from rsvision.errors import UserError


def _photo(h: int = 45, w: int = 61) -> np.ndarray:
    """Smooth colours and grain: something JPEG's subsampling and quantisation act on."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


SAVES = {
    "4:2:0": ("RGB", {"quality": 90}),
    "4:4:4": ("RGB", {"quality": 90, "subsampling": 0}),
    "progressive": ("RGB", {"quality": 75, "progressive": True}),
    "grey": ("L", {"quality": 90}),
    "cmyk": ("CMYK", {"quality": 90}),  # torchvision decodes CMYK its own way: Pillow reads it
}


@pytest.mark.parametrize("kind", list(SAVES))
def test_jpegs_read_as_tensors_with_pillows_pixels(tmp_path, kind):
    mode, options = SAVES[kind]
    path = tmp_path / "a.jpg"
    Image.fromarray(_photo()).convert(mode).save(path, "JPEG", **options)
    x = read_image(path)
    assert x.dtype == torch.uint8 and x.shape == (3, 45, 61)
    assert torch.equal(x, pil_to_tensor(read_rgb(path)))


def test_other_files_go_through_pillow(tmp_path):
    Image.fromarray(_photo()[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray((_photo()[..., 1].astype(np.uint16) * 257)).save(tmp_path / "deep.png")  # 16-bit
    for name in ("grey.png", "deep.png"):
        x = read_image(tmp_path / name)
        assert x.shape == (3, 45, 61) and torch.equal(x, pil_to_tensor(read_rgb(tmp_path / name)))
        assert torch.equal(x[0], x[2])


def test_a_damaged_jpeg_is_named(tmp_path):
    data = io.BytesIO()
    Image.fromarray(_photo()).save(data, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    with pytest.raises(UserError, match=r"cut\.jpg: cannot read image"):
        read_image(path)


def test_training_crops_of_an_image_folder_equal_those_of_pillow_images(tmp_path):
    """Same seeds, same batches: the folder's tensors and Pillow's images crop to the same values."""
    for split in ("train", "val"):
        for k in range(2):
            (tmp_path / split / f"c{k}").mkdir(parents=True)
            Image.fromarray(np.roll(_photo(), 7 * k, axis=1)).save(tmp_path / split / f"c{k}" / "0.jpg", quality=85)
    dataset = imagefolder(root=str(tmp_path), split="train")
    transform = MultiResolutionTransform([24, 16], scale=(0.2, 1.0))
    for i, (path, label) in enumerate(dataset.samples):
        image, got_label = dataset[i]
        assert got_label == label and isinstance(image, torch.Tensor)
        for seed in range(4):
            torch.manual_seed(seed)
            got = transform(image)["image"]
            torch.manual_seed(seed)
            assert torch.equal(got, transform(read_rgb(path))["image"])
