"""Inputs of predict and of the deployment commands: outputs of same-named images kept apart,
RGBA and grey arrays read as files are, float images outside [0, 1] refused, and advice and
errors that name what the user can do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from calib_fixtures import run_cli
from deploy_fixtures import cls_export, cls_run, seg_run
from PIL import Image

import rsvision
from rsvision.deploy.masks import output_names
from rsvision.errors import UserError

pytest.importorskip("onnxruntime")


def _image(h=30, w=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "images, expected",
    [
        (["x/a.png", "x/b.png"], ["a", "b"]),
        (["x/a/photo.png", "x/b/photo.png"], ["a_photo", "b_photo"]),
        (["x/a/photo.png", "y/a/photo.png", "z.png"], ["x_a_photo", "y_a_photo", "z"]),
        (["x/photo.png", "x/photo.jpg"], ["photo", "photo_2"]),  # no folder tells them apart
        (["x/photo.png", "x/photo.png", "x/photo.png"], ["photo", "photo_2", "photo_3"]),
        (["x/a/photo.png", "y/photo.png", "a_photo.png"], ["a_photo", "y_photo", "a_photo_2"]),  # a name taken by an earlier input
    ],
)
def test_output_names_are_distinct(tmp_path, images, expected):
    names = output_names([tmp_path / p for p in images])
    assert names == expected and len(set(names)) == len(names)


def test_predict_keeps_same_named_images_apart(tmp_path_factory, tmp_path, capsys):
    run = seg_run(tmp_path_factory)
    for folder, seed in (("a", 0), ("b", 1)):
        (tmp_path / folder).mkdir()
        Image.fromarray(_image(seed=seed)).save(tmp_path / folder / "photo.png")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["predict", str(run), str(tmp_path / "a/photo.png"), str(tmp_path / "b/photo.png"), "--res", "32", "-o", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a_photo_r32.png", "b_photo_r32.png"]
    assert "".join(stdout.splitlines()) == str(out / "a_photo_r32.png") + str(out / "b_photo_r32.png")  # each path once


@pytest.mark.parametrize("source", ["run", "export"])
def test_rgba_and_grey_arrays_predict_as_their_files(tmp_path_factory, tmp_path, source):
    model = rsvision.load(cls_run(tmp_path_factory) if source == "run" else cls_export(tmp_path_factory))
    rgb = _image()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    grey = rgb[..., 0]
    grey_alpha = np.dstack([grey, np.full(grey.shape, 200, np.uint8)])
    for name, array in (("rgba", rgba), ("grey", grey), ("grey_alpha", grey_alpha)):
        Image.fromarray(array).save(tmp_path / f"{name}.png")
        from_file = model.predict(str(tmp_path / f"{name}.png"))
        assert model.predict(array) == from_file, name
        assert model.predict(Image.fromarray(array)) == from_file, name
    assert model.predict(rgba) == model.predict(rgb)


def test_float_images_outside_0_1_are_refused(tmp_path_factory):
    model = rsvision.load(cls_export(tmp_path_factory))
    array = _image()
    shifted = array / 255.0
    shifted[0, 0, 0] = -0.5
    with pytest.raises(UserError, match=r"images\[1\]: a float image with values in \[0, 255\]; float images are taken as \[0, 1\]"):
        model.predict([array, array.astype(np.float32)])
    with pytest.raises(UserError, match=r"the image: a float image with values in \[-0.5, 1\]"):
        model.predict(shifted)
    scaled = model.predict(array.astype(np.float32) / 255)
    assert scaled.index == model.predict(array).index and scaled.probability == pytest.approx(model.predict(array).probability, abs=1e-5)


def test_deploy_beyond_the_scale_limit_states_the_limit_instead_of_advising_calibrate(tmp_path_factory, tmp_path, capsys):
    run = cls_run(tmp_path_factory)  # trained at 16 and 8: calibrate takes sizes up to 4 x 16 = 64
    code, _, err = run_cli(["deploy", str(run), "--budget-madds", "1G", "--res", "1000", "-o", str(tmp_path / "d")], capsys)
    assert code == 2 and "the limit is 64" in err and "--res 1000" not in err, err
    code, _, err = run_cli(["deploy", str(run), "--budget-madds", "1G", "--res", "40", "-o", str(tmp_path / "d")], capsys)
    assert code == 2 and f"rsvision calibrate {run} --res 40" in err, err  # within the limit: the advice stands
    code, _, err = run_cli(["calibrate", str(run), "--res", "65", "--images", "2"], capsys)
    assert code == 2 and "the limit is 64" in err, err  # the limit calibrate applies


def test_eval_names_a_bad_size_before_looking_for_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./runs here
    code, _, err = run_cli(["eval", "--res", "abc"], capsys)
    assert code == 2 and "--res abc: expected a size" in err, err
    assert not (Path(tmp_path) / "runs").exists()
