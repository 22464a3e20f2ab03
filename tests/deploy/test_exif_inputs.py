"""A phone photo given to ``rsvision.load(...).predict`` as a PIL image is read upright, as its file is."""

from __future__ import annotations

import numpy as np
from PIL import Image

from rsvision.data.datasets import read_rgb
from rsvision.deploy.load import _read


def test_a_pil_image_with_an_exif_orientation_is_read_as_its_file(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as opened:
        given = _read(opened, 3)
    assert given.size == (20, 40)
    assert np.array_equal(np.asarray(given), np.asarray(read_rgb(path)))
