"""The CLI as a thin layer: RUN positional everywhere (``--checkpoint`` an alias), one ``--res``
parser with ranges, ``--budget-madds``/``--budget-ms`` (``--budget`` the older spelling) and
the query table after training a width recipe with ``widths.query: true``, and ``--device`` on
every command that runs a trained network."""

import json
import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import tiny_recipe_dict
from deploy_fixtures import cls_run

from rsvision.cli import cli
from rsvision.report import human
from rsvision.run.files import META, QUERY


def _invoke(*args):
    """(exit status, stdout, stderr) of ``rsvision ARGS``."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _one_line_error(code, err, start):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {start}"), err


@pytest.fixture(scope="module")
def width_run(tmp_path_factory):
    """A width run trained through ``rsvision train`` with ``widths.query: true``: (run folder, train stdout)."""
    tmp = tmp_path_factory.mktemp("cli_width")
    recipe = tiny_recipe_dict(
        tmp, resolutions=[16, 8],
        model={"backbone": "resnet8", "num_classes": 4, "backbone_args": {"width": 8}},
        widths={"list": [1.0, 0.5], "divisor": 2, "calibration_images": 16, "query": True},
        train={"epochs": 1, "max_steps_per_epoch": 2},
    )
    path = tmp / "width.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, out, err = _invoke("train", path)
    assert code == 0, err
    (run,) = (tmp / "runs").iterdir()
    return run, out


def test_train_builds_and_prints_the_query_table(width_run):
    run, out = width_run
    assert "query table" in out and "4 configurations" in out
    cached = json.loads((run / QUERY).read_text())
    assert {(r["width"], r["resolution"]) for r in cached["report"]["rows"]} == {(1.0, 16), (1.0, 8), (0.5, 16), (0.5, 8)}


def test_run_positional_and_the_checkpoint_alias_give_the_same_evaluation(tmp_path_factory):
    run = cls_run(tmp_path_factory)
    results = []
    for args in (["eval", run, "--res", "16", "12"], ["eval", "--checkpoint", run, "--res", "16", "12"], ["eval", run, "--checkpoint", run, "--res", "12:16:4"]):
        code, out, err = _invoke(*args, "--json")
        assert code == 0, err
        results.append(json.loads(out)["results"])
    assert results[0] == results[1] and [r["subnet"] for r in results[0]] == ["16", "12"]
    assert results[2] == results[0][::-1]  # the range's order: 12, 16
    code, out, err = _invoke("eval", run, "--res", "16")
    assert code == 0 and "alpha" in out  # the training method's column
    code, _, err = _invoke("eval", run, "--checkpoint", tmp_path_factory.getbasetemp(), "--res", "16")
    _one_line_error(code, err, "eval: RUN ")
    assert "name different runs" in err


def test_res_ranges_in_profile_and_export(tmp_path_factory, tmp_path):
    run = cls_run(tmp_path_factory)
    code, out, err = _invoke("profile", run, "--res", "8:16:4", "--no-latency", "--json")
    assert code == 0, err
    assert [r["resolution"] for r in json.loads(out)["rows"]] == [8, 12, 16]
    code, out, err = _invoke("profile", "--checkpoint", run, "--res", "12:16:4", "8", "--no-latency", "--json")
    assert code == 0, err
    assert [r["resolution"] for r in json.loads(out)["rows"]] == [12, 16, 8]  # a trailing size after the range
    pytest.importorskip("onnxscript")
    code, out, err = _invoke("export", run, "--format", "onnx", "--res", "12:16:4", "-o", tmp_path / "onnx", "--json")
    assert code == 0, err
    assert {e["id"] for e in json.loads(out)["subnets"]} == {"16", "12"}
    code, _, err = _invoke("export", run, "--format", "onnx", "--res", "16", "x", "-o", tmp_path / "again")
    _one_line_error(code, err, "--res x: expected a size")


def test_query_budget_madds_and_the_budget_alias(width_run):
    run, _ = width_run
    rows = json.loads((run / QUERY).read_text())["report"]["rows"]
    limit = sorted(r["madds"] for r in rows)[1]  # the two cheapest fit
    best = max((r for r in rows if r["madds"] <= limit), key=lambda r: r["top1"])
    picks = []
    for option in ("--budget-madds", "--budget"):
        code, out, err = _invoke("query", run, option, limit, "--budget-ms", 1000, "--json")
        assert code == 0, err
        report = json.loads(out)
        assert report["cached"]  # written after training
        picks.append(report["best"])
    assert picks[0] == picks[1]
    assert [(p["kind"], p["budget"]) for p in picks[0]] == [("madds", limit), ("ms", 1000)]
    assert picks[0][0]["choice"]["top1"] == best["top1"] and picks[0][0]["choice"]["madds"] <= limit
    code, out, err = _invoke("query", "--checkpoint", run, "--budget", limit)
    assert code == 0, err
    assert "query table" in out and f"budget {human(limit)} MAdds: " in out


@pytest.mark.parametrize(
    "args, start",
    [
        (["--budget-madds", "12Q"], "--budget-madds 12Q: expected a number of multiply-adds"),
        (["--budget", "12Q"], "--budget 12Q: expected a number of multiply-adds"),
        (["--budget-ms", "soon"], "--budget-ms soon: expected a positive number of milliseconds"),
        (["--budget", "1"], "--budget: no configuration fits 1 MAdds (the cheapest, 0.50x @ 8x8, needs "),
    ],
)
def test_bad_budgets_are_one_line_naming_the_option(width_run, args, start):
    run, _ = width_run
    code, _, err = _invoke("query", run, *args)
    _one_line_error(code, err, start)


def test_deploy_takes_the_same_budget_options(tmp_path_factory, tmp_path):
    run = cls_run(tmp_path_factory)
    code, _, err = _invoke("deploy", run, "--budget", "12Q", "-o", tmp_path / "d")
    _one_line_error(code, err, "--budget 12Q: expected a number of multiply-adds")
    code, _, err = _invoke("deploy", "--checkpoint", run, "--budget", "1G", "--budget-ms", "5", "-o", tmp_path / "d")
    _one_line_error(code, err, "give exactly one of --budget-madds")
    assert not (tmp_path / "d").exists()


def test_predict_takes_run_first_then_images(tmp_path_factory, tmp_path):
    from deploy_fixtures import seg_run
    from PIL import Image

    run = seg_run(tmp_path_factory)
    image = tmp_path / "room.png"
    Image.new("RGB", (40, 40), color=(90, 20, 200)).save(image)
    code, _, err = _invoke("predict", run, image, "--res", "32:64:32", "-o", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["room_r32.png", "room_r64.png"]
    code, _, err = _invoke("predict", run, tmp_path, "-o", tmp_path / "again")
    _one_line_error(code, err, f"{tmp_path}: a folder, not an image")


#: Commands that run a trained network, each with arguments that get it past click's parsing.
AFTER_TRAINING = {
    "eval": ["nowhere"],
    "calibrate": ["nowhere", "--res", "12"],
    "query": ["nowhere"],
    "plot": ["nowhere", "-o", "fig.png"],
    "export": ["nowhere", "--format", "onnx", "-o", "onnx"],
    "deploy": ["nowhere", "--budget-madds", "1G"],
    "predict": ["nowhere", "image.png"],
    "profile": ["nowhere", "--res", "16"],
}


def test_every_after_training_command_takes_device():
    for name in AFTER_TRAINING:
        (option,) = [p for p in cli.commands[name].params if p.name == "device"]
        assert option.default == "auto", name


@pytest.mark.parametrize("command", sorted(AFTER_TRAINING))
@pytest.mark.parametrize(
    "device, start",
    [
        ("gpu", "--device gpu: not a device (expected auto, cpu, cuda, cuda:N or mps)"),
        pytest.param("cuda", "--device cuda: CUDA is not available on this machine",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    ],
)
def test_a_bad_device_is_one_line_before_any_work(command, device, start, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written: the device is checked first
    code, _, err = _invoke(command, *AFTER_TRAINING[command], "--device", device)
    _one_line_error(code, err, start)
    assert not list(tmp_path.iterdir())


def test_device_cpu_gives_the_numbers_of_the_cpu_evaluation(tmp_path_factory):
    from rsvision.engine.evaluate import evaluate
    from rsvision.run.folder import load_artifact

    run = cls_run(tmp_path_factory)
    code, out, err = _invoke("eval", run, "--res", "16", "12", "--device", "cpu", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["device"], report["precision"]) == ("cpu", "fp32")
    artifact = load_artifact(run)
    reference = evaluate(artifact.model, artifact.task, ["16", "12"])
    assert [{k: row[k] for k in ref} for row, ref in zip(report["results"], reference)] == reference
    profiles = []
    for extra in ([], ["--device", "cpu"]):
        code, out, err = _invoke("profile", run, "--res", "16", "8", "--no-latency", "--json", *extra)
        assert code == 0, err
        profiles.append(json.loads(out))
    assert profiles[0] == profiles[1] and profiles[0]["device"] == "cpu"


def _trained_in_bf16(run, tmp_path):
    """A copy of ``run`` whose recipe says it trained in bf16 (the same weights)."""
    copy = tmp_path / "bf16"
    shutil.copytree(run, copy)
    meta = json.loads((copy / META).read_text())
    meta["recipe"]["train"]["mixed_precision"] = "bf16"
    (copy / META).write_text(json.dumps(meta))
    return copy


def test_a_mixed_precision_run_evaluates_in_float32_on_the_cpu(tmp_path_factory, tmp_path):
    run = cls_run(tmp_path_factory)
    bf16 = _trained_in_bf16(run, tmp_path)
    reports = []
    for folder in (run, bf16):
        code, out, err = _invoke("eval", folder, "--res", "16", "12", "--device", "cpu", "--json")
        assert code == 0, err
        reports.append(json.loads(out))
    assert reports[1]["precision"] == "fp32" and reports[1]["results"] == reports[0]["results"]


@pytest.mark.cuda
def test_a_mixed_precision_run_evaluates_in_autocast_on_cuda(tmp_path_factory, tmp_path):
    run = cls_run(tmp_path_factory)
    bf16 = _trained_in_bf16(run, tmp_path)
    results = {}
    for folder, device in ((run, "cpu"), (run, "cuda"), (bf16, "cuda")):
        code, out, err = _invoke("eval", folder, "--res", "16", "12", "--device", device, "--json")
        assert code == 0, err
        report = json.loads(out)
        results[folder.name, device] = report
    assert results[bf16.name, "cuda"]["precision"] == "bf16" and results[run.name, "cuda"]["precision"] == "fp32"
    for report in results.values():  # 16 validation images: the same predictions within one image
        for row, cpu_row in zip(report["results"], results[run.name, "cpu"]["results"]):
            assert abs(row["top1"] - cpu_row["top1"]) <= 100 / 16 + 1e-6


@pytest.mark.cuda
def test_after_training_commands_run_on_cuda(tmp_path_factory, tmp_path):
    pytest.importorskip("onnxscript")
    run = tmp_path / "run"
    shutil.copytree(cls_run(tmp_path_factory), run)  # calibrate writes into the run
    code, out, err = _invoke("profile", run, "--res", "16", "8", "--device", "cuda", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["device"].startswith("cuda") and all(row["latency_ms"] > 0 for row in report["rows"])
    code, _, err = _invoke("calibrate", run, "--res", "12", "--images", "16", "--device", "cuda")
    assert code == 0, err
    code, out, err = _invoke("export", run, "--format", "onnx", "--res", "16", "12", "-o", tmp_path / "onnx", "--device", "cuda", "--json")
    assert code == 0, err  # traced, and checked against onnxruntime, on the CPU
    assert all("check_max_abs_diff" in entry for entry in json.loads(out)["subnets"])
