"""rsvision.load: run folders, packed files and ONNX exports predict alike, from any image type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_fixtures import cls_export, cls_run, seg_export, seg_run
from PIL import Image

import rsvision
from rsvision.data.transforms import EvalTransform
from rsvision.errors import UserError
from rsvision.nn.switchable import at_subnet
from rsvision.run.folder import read_meta

pytest.importorskip("onnxruntime")


def _image(h=30, w=40, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_run_folder_predicts_top_class_from_any_image_type(tmp_path_factory, tmp_path):
    run = cls_run(tmp_path_factory)
    model = rsvision.load(run)
    assert model.resolutions == [16, 8] and [s.id for s in model.subnets] == ["16", "8"]
    assert model.class_names == read_meta(run)["class_names"] and len(model.class_names) == 4
    array = _image()
    Image.fromarray(array).save(tmp_path / "a.png")
    pil, path, tensor = Image.fromarray(array), tmp_path / "a.png", torch.from_numpy(array).permute(2, 0, 1)
    results = model.predict([pil, str(path), array, tensor])
    assert len({(r.index, round(r.probability, 6)) for r in results}) == 1
    top = results[0]
    # By hand: the evaluation view, the switchable model at its largest resolution, softmax.
    x = EvalTransform([16], model.input_format)(array)["images"][0][None]
    artifact_model = model.model
    with torch.no_grad(), at_subnet(artifact_model, 16):
        probs = artifact_model(x).softmax(1)[0]
    assert top.index == int(probs.argmax()) and top.name == model.class_names[top.index]
    assert top.probability == pytest.approx(float(probs.max()), abs=1e-5)
    single = model.predict(pil, resolution=8)
    assert single.index in range(4) and 0 < single.probability <= 1


def test_at_gives_eval_networks_and_no_mode_changes(tmp_path_factory):
    model = rsvision.load(cls_run(tmp_path_factory))
    assert not model.model.training
    net = model.at(12)  # interpolated BN
    assert isinstance(net, torch.nn.Module) and not net.training and model.at(12) is net
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad(), at_subnet(model.model, 12):
        expected = model.model(x)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    net.train()
    model.predict(_image(), resolution=12)
    assert net.training and not model.model.training  # the caller's choice is kept


def test_a_sub_network_predicts_as_the_model_at_its_resolution(tmp_path_factory):
    images = [_image(seed=i) for i in range(3)]
    for model in (rsvision.load(cls_run(tmp_path_factory)), rsvision.load(cls_export(tmp_path_factory))):
        for r in (16, 12):
            assert model.at(r).predict(images) == model.predict(images, r)
            assert model.at(r).predict(images[0]) == model.predict(images[0], r)


def test_onnx_export_predicts_like_the_run(tmp_path_factory):
    run_model = rsvision.load(cls_run(tmp_path_factory))
    onnx_model = rsvision.load(cls_export(tmp_path_factory))
    assert onnx_model.resolutions == [16, 12] and onnx_model.class_names == run_model.class_names
    assert onnx_model.input_format == run_model.input_format
    images = [_image(seed=i) for i in range(3)]
    for r in (16, 12):
        a, b = run_model.predict(images, r), onnx_model.predict(images, r)
        assert [p.index for p in a] == [p.index for p in b]
        assert np.allclose([p.probability for p in a], [p.probability for p in b], atol=1e-5)
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(onnx_model.at(12)(x), run_model.at(12)(x), atol=1e-4, rtol=0)
    assert isinstance(onnx_model.at(12)(x.numpy()), np.ndarray)


def test_segmentation_predicts_a_class_map_at_the_image_size(tmp_path_factory):
    image = _image(50, 70)
    maps = [rsvision.load(p).predict(image, 32) for p in (seg_run(tmp_path_factory), seg_export(tmp_path_factory))]
    for m in maps:
        assert m.shape == (50, 70) and m.dtype == np.uint8 and m.max() < 6
    assert (maps[0] == maps[1]).mean() > 0.999


def test_packed_file_loads_through_load_artifact(tmp_path_factory, tmp_path):
    from deploy_fixtures import quant_run

    from rsvision.cli import main

    main(["export", "--checkpoint", str(quant_run(tmp_path_factory)), "--format", "lq", "-o", str(tmp_path / "m.lq"), "--json"])
    packed, run = rsvision.load(tmp_path / "m.lq"), rsvision.load(quant_run(tmp_path_factory))
    assert packed.resolutions == run.resolutions
    assert packed.predict(_image(), 16) == run.predict(_image(), 16)


def test_load_errors_name_the_culprit(tmp_path_factory, tmp_path):
    with pytest.raises(UserError, match="neither a run folder"):
        rsvision.load(tmp_path)
    with pytest.raises(UserError, match="no such run folder or file"):
        rsvision.load(tmp_path / "missing")
    onnx_model = rsvision.load(cls_export(tmp_path_factory))
    with pytest.raises(UserError, match=r"sub-network 8 is not in this export \(exported: 16, 12\)"):
        onnx_model.at(8)
    with pytest.raises(UserError, match="not a sub-network id"):
        onnx_model.predict(_image(), "eight")
    with pytest.raises(UserError, match="outside the trained range"):
        rsvision.load(cls_run(tmp_path_factory)).at(64)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt manifest"):
        rsvision.load(tmp_path)
