"""rsvision.load: run folders, packed files and ONNX exports predict alike, from any image type,
on the device asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_fixtures import cls_export, cls_run, seg_export, seg_run
from PIL import Image

import rsvision
from rsvision.data.transforms import EvalTransform
from rsvision.deploy.load import DeviceNetwork, OnnxModel
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


def test_load_on_the_cpu_is_the_plain_network_as_before(tmp_path_factory):
    from rsvision.deploy.network import plain_subnet
    from rsvision.run.folder import load_artifact

    run = cls_run(tmp_path_factory)
    model = rsvision.load(run, device="cpu")
    assert model.device == torch.device("cpu") and not isinstance(model.at(16), DeviceNetwork)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # what load(run).at(16) ran before there was a device
        before = plain_subnet(load_artifact(run).model, 16, channels_last=True).network(x)
        assert torch.equal(model.at(16)(x), before)
    images = [_image(seed=s) for s in range(3)]
    assert model.predict(images, 8) == rsvision.load(run).predict(images, 8)


def test_a_bad_device_for_load_is_one_line(tmp_path_factory):
    with pytest.raises(UserError, match=r"^device gpu: not a device \(expected auto, cpu, cuda, cuda:N or mps\)$"):
        rsvision.load(cls_run(tmp_path_factory), device="gpu")
    assert isinstance(rsvision.load(cls_export(tmp_path_factory), device="cpu"), OnnxModel)  # an export runs on the CPU


def test_a_device_network_moves_inputs_and_brings_float32_outputs_back():
    """DeviceNetwork's contract, on the CPU in bf16 autocast (its CUDA use differs only in the device)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = net(x)
        wrapped = DeviceNetwork(net, torch.device("cpu"), torch.bfloat16)
        out = wrapped(x)
    assert out.dtype == torch.float32 and out.device == x.device
    assert not torch.equal(out, full)  # it ran in bfloat16 ...
    torch.testing.assert_close(out, full, atol=0.05, rtol=0.05)  # ... to bfloat16's precision
    detector = DeviceNetwork(_ListNet(), torch.device("cpu"), None)
    (boxes,) = detector([torch.ones(3, 4, 4)])
    assert boxes["scores"].dtype == torch.float32 and boxes["labels"].dtype == torch.int64


class _ListNet(torch.nn.Module):
    """A detector's interface: a list of images in, a dict per image out."""

    def forward(self, images):
        return [{"scores": image.mean().reshape(1), "labels": torch.ones(1, dtype=torch.int64)} for image in images]


@pytest.mark.cuda
def test_load_on_cuda_predicts_as_on_the_cpu(tmp_path_factory):
    run = cls_run(tmp_path_factory)
    cpu, cuda = rsvision.load(run, device="cpu"), rsvision.load(run, device="cuda")
    assert isinstance(cuda.at(16), DeviceNetwork) and next(cuda.model.parameters()).is_cuda
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = cuda.at(16)(x)
        assert out.device == x.device and out.dtype == torch.float32
        torch.testing.assert_close(out, cpu.at(16)(x), atol=1e-2, rtol=1e-2)  # TF32 convolutions on the GPU
    images = [_image(seed=s) for s in range(4)]
    assert [p.index for p in cuda.predict(images)] == [p.index for p in cpu.predict(images)]
    with pytest.raises(UserError, match="an ONNX export runs in onnxruntime's CPU session"):
        rsvision.load(cls_export(tmp_path_factory), device="cuda")
