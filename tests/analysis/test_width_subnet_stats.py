"""Width sub-networks after training: export, deploy and calibrate never use the
training-time shared BN statistics (post-hoc BN) and refuse widths outside the trained range."""

import json

import pytest
import torch
from calib_fixtures import copy_run, run_cli
from conftest import tiny_recipe_dict
from deploy_fixtures import cls_run

from rsvision.engine import train
from rsvision.errors import UserError
from rsvision.nn.bn_stats import calibrated_subnets
from rsvision.recipe import validate_recipe
from rsvision.run.files import CALIBRATION
from rsvision.run.folder import load_artifact

pytest.importorskip("onnxruntime")

OUTSIDE = "width 0.1 is outside the trained width range 0.25..1"


@pytest.fixture(scope="module")
def width_run(tmp_path_factory):
    """resnet8 (width 8) trained a few steps over widths 0.25-1.0 at 16 and 8 px, post-hoc BN."""
    recipe = tiny_recipe_dict(
        tmp_path_factory.mktemp("width"), resolutions=[16, 8],
        model={"backbone": "resnet8", "num_classes": 4, "backbone_args": {"width": 8}},
        widths={"range": [0.25, 1.0], "divisor": 2, "calibration_images": 16},
        train={"epochs": 1, "max_steps_per_epoch": 3},
    )
    return train(validate_recipe(recipe), name="width", quiet=True)


@pytest.fixture
def run(width_run, tmp_path):
    """A copy of the width run: the commands below may store recomputed statistics in it."""
    return copy_run(width_run, tmp_path / "run")


def _one_line(code, err, message):
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err


def _stored(run) -> list[str]:
    return [s.id for s in calibrated_subnets(load_artifact(run).model)] if (run / CALIBRATION).exists() else []


def test_export_recomputes_the_statistics_of_a_width_sub_network(run, tmp_path, capsys):
    out = tmp_path / "onnx"
    code, _, err = run_cli(["export", str(run), "--format", "onnx", "--subnet", "16w50", "-o", str(out)], capsys)
    assert code == 0, err
    entries = json.loads((out / "manifest.json").read_text())["subnets"]
    assert [(e["id"], e["bn_status"]) for e in entries] == [("16w50", "calibrated")]
    assert _stored(run) == ["16w50"]  # as `eval --width` stores them


def test_export_refuses_a_width_outside_the_trained_range(run, tmp_path, capsys):
    out = tmp_path / "onnx"
    code, _, err = run_cli(["export", str(run), "--format", "onnx", "--subnet", "16w10", "-o", str(out)], capsys)
    _one_line(code, err, f"sub-network 16w10: {OUTSIDE}")
    assert not out.exists() and _stored(run) == []


def test_calibrate_refuses_a_width_outside_the_trained_range(run, capsys):
    code, _, err = run_cli(["calibrate", str(run), "--res", "16w10", "--images", "8"], capsys)
    _one_line(code, err, f"cannot calibrate sub-network 16w10 (0.10x @ 16x16): {OUTSIDE}")
    assert not (run / CALIBRATION).exists()


def test_deploy_scores_and_exports_no_candidate_with_shared_statistics(run, tmp_path, capsys):
    out = tmp_path / "deployed"
    code, stdout, err = run_cli(["deploy", str(run), "--budget-madds", "1G", "-o", str(out), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    trained = ["16w100", "8w100", "16w25", "8w25"]
    assert sorted(r["subnet"] for r in report["candidates"]) == sorted(trained)
    assert {r["status"] for r in report["candidates"]} == {"calibrated"}
    assert sorted(report["calibrated"]) == sorted(trained) and sorted(_stored(run)) == sorted(trained)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["bn_status"] for e in manifest["subnets"]] == ["calibrated"]


def test_a_width_on_a_resolution_only_run_is_refused_without_suggesting_calibrate(tmp_path_factory):
    import rsvision

    with pytest.raises(UserError) as error:
        rsvision.load(cls_run(tmp_path_factory)).at("16w50")
    message = str(error.value)
    assert "sub-network 16w50: the run has no width axis (trained sub-networks: 16, 8)" in message
    assert "calibrate" not in message


def test_load_refuses_a_width_sub_network_without_its_statistics_naming_calibrate(run, capsys):
    import rsvision

    with pytest.raises(UserError, match=r"sub-network 16w50 has no BN statistics of its own \(post-hoc BN\); run `rsvision calibrate .* --res 16w50` first"):
        rsvision.load(run).at("16w50")
    code, _, err = run_cli(["calibrate", str(run), "--res", "16w50", "--images", "8"], capsys)
    assert code == 0, err
    assert rsvision.load(run).at("16w50").predict(torch.rand(3, 16, 16)) is not None
