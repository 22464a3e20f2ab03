"""ONNX export: BN folding, one graph per sub-network, manifest, onnxruntime against PyTorch on validation images."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from deploy_fixtures import cls_export, cls_run, quant_run, seg_export, seg_run
from torch import nn

from rsvision.cli import main
from rsvision.data.transforms import InputFormat
from rsvision.deploy.export import check_inputs
from rsvision.deploy.network import plain_subnet
from rsvision.deploy.onnx import run_session, session
from rsvision.io import file_sha256
from rsvision.nn.fold import fold_batchnorm
from rsvision.nn.switchable import at_subnet
from rsvision.quant.modules import QUANT_LAYERS
from rsvision.run.folder import load_artifact

onnxruntime = pytest.importorskip("onnxruntime")


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _one_line_error(code, err, message):
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- BN folding -------------------------------------------------------------------------


class _Net(nn.Module):
    """conv -> BN (folds), BN after a ReLU (stays), a conv whose output also feeds an add (stays)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv2, self.bn3 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn2(torch.relu(self.bn1(self.conv1(x))))
        y = self.conv2(x)
        return self.bn3(y) + y


class _Shapes(nn.Module):
    """Control flow on a shape: not traceable, so it is kept and folded inside."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if x.shape[-1] > 4:
            x = x * 2
        return self.block(x)


def _randomise_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("net, folded, left, untraced", [(_Net, 1, 2, []), (_Shapes, 1, 0, ["<root>"])])
def test_fold_batchnorm_folds_conv_bn_pairs_only(net, folded, left, untraced):
    model = _randomise_bn(net())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        plain, report = fold_batchnorm(model)
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
    assert (report.folded, report.left, report.untraced) == (folded, left, untraced)
    assert not plain.training


# --- classification ---------------------------------------------------------------------


def test_classification_export_matches_pytorch_on_validation_images(tmp_path_factory):
    export_dir = cls_export(tmp_path_factory)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    artifact = load_artifact(cls_run(tmp_path_factory))
    assert manifest["task"] == "cls" and manifest["opset"] >= 18 and manifest["rsvision"]
    assert {k: manifest["input"][k] for k in ("name", "layout", "dtype", "batch")} == {"name": "input", "layout": "NCHW", "dtype": "float32", "batch": "dynamic"}
    assert InputFormat.from_dict(manifest["input"]) == artifact.input_format
    assert manifest["class_names"] == artifact.meta["class_names"] and manifest["output"]["shape"] == ["N", 4]
    assert manifest["check"]["inputs"] == "4 validation images" and manifest["quantization"] is None
    assert [(e["id"], e["bn_status"]) for e in manifest["subnets"]] == [("16", "trained"), ("12", "interpolated")]
    inputs, _ = check_inputs(artifact.task, [16, 12])
    for entry in manifest["subnets"]:
        assert entry["bn_folded"] == 9 and entry["bn_left"] == 0 and entry["check_max_abs_diff"] <= 1e-4
        assert entry["madds"] == artifact.meta["madds"].get(entry["id"], entry["madds"]) and entry["parameters"] > 0
        x = inputs[entry["resolution"]]
        with torch.no_grad(), at_subnet(artifact.model, entry["id"]):
            expected = artifact.model(x)
        got = run_session(session(export_dir / entry["file"]), x)
        assert got.shape == (4, 4)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


# --- segmentation and quantized runs ----------------------------------------------------


def test_segmentation_export_matches_pytorch_on_validation_images(tmp_path_factory):
    export_dir = seg_export(tmp_path_factory)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    artifact = load_artifact(seg_run(tmp_path_factory))
    assert manifest["task"] == "seg" and manifest["view"]["name"] == "resize"
    assert manifest["output"]["shape"] == ["N", 6, "h", "w"] and "upsample" in manifest["output"]["meaning"]
    inputs, text = check_inputs(artifact.task, [64, 32])
    assert text == "4 validation images"
    for entry in manifest["subnets"]:
        r = entry["resolution"]
        assert entry["output_shape"] == ["N", 6, r // 4, r // 4] and entry["bn_left"] == 0
        with torch.no_grad(), at_subnet(artifact.model, entry["id"]):
            expected = artifact.model(inputs[r])
        torch.testing.assert_close(run_session(session(export_dir / entry["file"]), inputs[r]), expected, atol=1e-4, rtol=0)


def test_quantized_run_exports_a_dequantized_float_graph(tmp_path_factory, tmp_path, capsys):
    import onnx

    run = quant_run(tmp_path_factory)
    main(["export", str(run), "--format", "onnx", "--res", "16", "-o", str(tmp_path / "q")])
    printed = capsys.readouterr().out
    assert "de-quantized float graph" in printed
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    q = manifest["quantization"]
    assert q["weight_bits"] == [2] and q["activation_bits"] == [2] and q["activation_quantizers"] > 0 and q["left"] == []
    entry, checked = manifest["subnets"][0], int(manifest["check"]["inputs"].split()[0])
    assert entry["check_max_abs_diff"] <= 1e-4 and checked > 4  # a quantized graph is checked on many images
    assert entry["check_compared"] > 0 and entry["check_compared"] + entry["check_near_ties"] == checked
    assert manifest["check"]["reference"].startswith("the folded network")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q" / "model_16.onnx")).graph.node}  # activations: Greater/Where
    assert {"Conv", "Greater", "Where"} <= ops
    artifact = load_artifact(run)
    plain = plain_subnet(artifact.model, 16, fold=False).network  # what was exported, before folding
    quantized = [m for m in artifact.model.modules() if isinstance(m, QUANT_LAYERS)]
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)][1:]  # the first conv stays float
    assert len(convs) == len(quantized) == q["weight_quantized_layers"]
    for conv, layer in zip(convs, quantized):
        levels = layer.weight_quantizer.levels()
        assert all(torch.isin(conv.weight[c].flatten(), levels[c]).all() for c in range(conv.out_channels))


# --- profile --onnx and errors ----------------------------------------------------------


def test_profile_onnx_reports_latency_and_madds(tmp_path_factory, capsys):
    export_dir = cls_export(tmp_path_factory)
    main(["profile", "--onnx", str(export_dir), "--json"])
    report = json.loads(capsys.readouterr().out)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert [r["id"] for r in report["rows"]] == ["16", "12"] and report["batch"] == 1
    assert [r["madds"] for r in report["rows"]] == [e["madds"] for e in manifest["subnets"]]
    assert all(r["latency_ms"] > 0 for r in report["rows"]) and report["rows"][0]["latency_ratio"] == 1.0


def test_latency_of_one_sub_network_three_ways(tmp_path_factory):
    from rsvision.deploy.network import measure_subnet

    artifact = load_artifact(cls_run(tmp_path_factory))
    artifact.model.train()
    threads = torch.get_num_threads()
    ms = measure_subnet(artifact.model, 12, torch.zeros(1, 3, 12, 12), cls_export(tmp_path_factory) / "model_12.onnx", threads=1, repeats=2, warmup=1)
    assert set(ms) == {"eager", "folded", "onnxruntime"} and all(v > 0 for v in ms.values())
    assert artifact.model.training and torch.get_num_threads() == threads  # mode and threads restored


def _broken_copy(export_dir, tmp_path, fix_hash):
    import shutil

    copy = tmp_path / "broken"
    shutil.copytree(export_dir, copy)
    (copy / "model_16.onnx").write_bytes(b"not an onnx graph")
    if fix_hash:
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["subnets"][0]["sha256"] = file_sha256(copy / "model_16.onnx")
        (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda run, exp, tmp: ["export", str(tmp), "--format", "onnx", "-o", str(tmp / "o")], "not an rsvision run folder"),
        (lambda run, exp, tmp: ["export", str(run), "--format", "onnx", "--res", "40", "-o", str(tmp / "o")], "outside the trained range 8..16"),
        (lambda run, exp, tmp: ["export", str(run), "--format", "onnx", "--subnet", "12w50", "-o", str(tmp / "o")], "sub-network 12w50"),
        (lambda run, exp, tmp: ["export", str(run), "--format", "onnx", "--subnet", "big", "-o", str(tmp / "o")], "not a sub-network id: 'big'"),
        (lambda run, exp, tmp: ["export", str(run), "--format", "onnx", "--res", "16", "x", "-o", str(tmp / "o")], "--res x: expected a size"),
        (lambda run, exp, tmp: ["export", "--format", "onnx", "-o", str(tmp / "o")], "give the run folder"),
        (lambda run, exp, tmp: ["export", str(run), "--format", "lq", "--res", "16", "-o", str(tmp / "o")], "apply to --format onnx"),
        (lambda run, exp, tmp: ["profile", "--onnx", str(tmp)], "no manifest.json"),
        (lambda run, exp, tmp: ["profile", "--onnx", str(tmp / "nothing")], "no such export directory"),
        (lambda run, exp, tmp: ["profile", "--onnx", str(exp), "--res", "16"], "drop --res"),
        (lambda run, exp, tmp: ["profile", "--checkpoint", str(run)], "--res is required"),
        (lambda run, exp, tmp: ["profile", "--onnx", str(_broken_copy(exp, tmp, False))], "corrupt or changed since export"),
        (lambda run, exp, tmp: ["profile", "--onnx", str(_broken_copy(exp, tmp, True))], "not a readable ONNX model"),
    ],
)
def test_bad_inputs_get_one_line_and_exit_2(tmp_path_factory, tmp_path, capsys, make_args, message):
    args = make_args(cls_run(tmp_path_factory), cls_export(tmp_path_factory), tmp_path)
    code, _, err = _run_cli(args, capsys)
    _one_line_error(code, err, message)


def test_without_the_deploy_extra_the_package_works_and_deploy_commands_say_what_to_install(tmp_path_factory, tmp_path):
    run = cls_run(tmp_path_factory)
    script = f"""
import sys
for name in ("onnx", "onnxruntime", "onnxscript"):
    sys.modules[name] = None
import rsvision, rsvision.deploy.export, rsvision.deploy.select, rsvision.deploy.load, rsvision.analysis.latency, rsvision.nn.fold
from rsvision.cli import main
from rsvision.data.transforms import InputFormat
assert callable(rsvision.load)
for args in (["export", {str(run)!r}, "--format", "onnx", "-o", {str(tmp_path / 'o')!r}],
             ["deploy", {str(run)!r}, "--budget-madds", "1G"],
             ["profile", "--onnx", {str(tmp_path)!r}]):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code == 2, exc.code
main(["list", "--json"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ['error: onnx is not installed: pip install "rsvision[deploy]"'] * 2 + ['error: onnxruntime is not installed: pip install "rsvision[deploy]"']
    assert '"backbones"' in done.stdout
