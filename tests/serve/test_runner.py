"""Request decoding, the images the worker takes, the accuracy ranking and the answers' JSON fields."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from calib_fixtures import copy_run
from deploy_fixtures import cls_run
from PIL import Image

import rsvision
from rsvision.deploy.load import Detections, Prediction
from rsvision.run.evaluations import EvaluationStore, data_key
from rsvision.serve.decode import BadInput, body_kind, decode_image
from rsvision.serve.runner import Runner, SwitchedNetwork, answer_fields


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _png_array(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def test_a_jpeg_is_drafted_down_to_the_size_the_view_needs():
    jpeg = _encoded(Image.fromarray(np.full((600, 800, 3), 90, np.uint8)), "JPEG")
    # Shorter side 73 of 600: 800 x 600 // (98, 73) = 8, so the decoder works at 1/8: 100 x 75.
    assert decode_image(jpeg, 10**6, shorter_side=73).size == (100, 75)
    # Shorter side 200: 1/4 would give 150 < 200; (800 // 267, 600 // 200) = (2, 3), so 1/2.
    assert decode_image(jpeg, 10**6, shorter_side=200).size == (400, 300)
    assert decode_image(jpeg, 10**6).size == (800, 600)


def test_decoding_converts_as_rsvision_load_and_refuses_what_it_cannot_take():
    grey16 = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert np.asarray(decode_image(_encoded(grey16, "PNG"), 100)).tolist() == [[[0] * 3, [100] * 3, [255] * 3]]
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0]]], dtype=np.uint8))
    assert np.asarray(decode_image(_encoded(rgba, "PNG"), 100)).tolist() == [[[10, 20, 30]]]
    with pytest.raises(BadInput, match=r"a 20x10 image \(0.0 Mpixel\) is over the limit of 0.0001 Mpixel") as refused:
        decode_image(_encoded(Image.new("RGB", (20, 10)), "PNG"), 100)
    assert refused.value.status == 413
    assert [body_kind(t) for t in (None, "image/jpeg", "application/octet-stream", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")] == \
        ["raw", "raw", "raw", "raw", "multipart"]
    with pytest.raises(BadInput, match="content type text/plain") as refused:
        body_kind("text/plain; charset=utf-8")
    assert refused.value.status == 415


def test_a_phone_photo_is_decoded_upright_as_rsvision_load_reads_it(tmp_path):
    """EXIF orientation 6 (stored sideways, shown turned 90 degrees clockwise): a 40 wide x 20
    high stored image is shown 20 wide x 40 high, its left column at the top."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :8] = 255  # a white band on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(stored).save(out, format="JPEG", exif=exif, quality=95)
    decoded = decode_image(out.getvalue(), 10**6)
    assert decoded.size == (20, 40)
    shown = np.asarray(decoded)
    assert shown[:8].mean() > 200 and shown[-8:].mean() < 50  # the band is now on top
    (tmp_path / "photo.jpg").write_bytes(out.getvalue())
    from rsvision.data.datasets import read_rgb

    assert np.array_equal(shown, np.asarray(read_rgb(tmp_path / "photo.jpg")))


def test_answers_as_json_fields():
    assert answer_fields(Prediction(2, "cat", 0.75)) == {"index": 2, "name": "cat", "probability": 0.75}
    class_map = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    fields = answer_fields(class_map)
    assert (fields["height"], fields["width"]) == (2, 3) and _png_array(fields["class_map"]).tolist() == class_map.tolist()
    masks = torch.zeros(1, 2, 3, dtype=torch.bool)
    masks[0, 1, 2] = True
    detections = Detections(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), [1], ["cat"], torch.tensor([0.5]), masks)
    fields = answer_fields(detections)
    assert {k: v for k, v in fields.items() if k != "masks"} == {"boxes": [[1.0, 2.0, 3.0, 4.0]], "labels": [1], "names": ["cat"], "scores": [0.5]}
    assert _png_array(fields["masks"][0]).tolist() == [[0, 0, 0], [0, 0, 255]]


def test_prepared_images_and_the_accuracy_ranking(tmp_path_factory, tmp_path):
    run = copy_run(cls_run(tmp_path_factory), tmp_path / "run")
    runner = Runner(rsvision.load(run))
    assert runner.shorter_side == 18  # int(16 / 0.875)
    big = _encoded(Image.fromarray(np.zeros((200, 300, 3), np.uint8)), "PNG")
    prepared = runner.prepare(big, 10**6)
    assert prepared.image.shape == (3, 18, 27) and (prepared.height, prepared.width) == (200, 300)
    small = runner.prepare(_encoded(Image.fromarray(np.zeros((10, 12, 3), np.uint8)), "PNG"), 10**6)
    assert small.image.shape == (3, 10, 12)  # enlarged by the view, as rsvision.load does
    table = {"16": {1: 2.0}, "8": {1: 1.0}}
    # The training metrics tie (a tiny run): the cheaper first, as deploy's choice rule.
    assert runner.accuracy["16"] == runner.accuracy["8"] and runner.ranked(table) == ["8", "16"]
    model = rsvision.load(run)
    EvaluationStore.open(run).record(data_key(model.artifact), [{"subnet": "16", "top1": 60.0}, {"subnet": "8", "top1": 40.0}])
    runner = Runner(model)
    assert runner.accuracy == {"16": 60.0, "8": 40.0} and runner.ranked(table) == ["16", "8"]


def test_every_subnetwork_runs_from_the_one_model(tmp_path_factory):
    loaded = rsvision.load(cls_run(tmp_path_factory))
    runner = Runner(loaded)
    images = [torch.randint(0, 256, (3, 18, 24), dtype=torch.uint8) for _ in range(3)]
    for subnet in ("16", "8"):
        network = runner.model.at(subnet)
        assert isinstance(network, SwitchedNetwork) and network.model is loaded.model  # no copy of the weights
        served, folded = runner.run(subnet, images), loaded.predict(images, subnet)  # load folds BN into a copy
        assert [p.index for p in served] == [p.index for p in folded]
        assert np.allclose([p.probability for p in served], [p.probability for p in folded], atol=1e-5)
    assert not loaded.model.training
