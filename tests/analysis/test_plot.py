"""Dense evaluation, kept evaluations and the plot: the numbers it draws, the status of each point."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest
from calib_fixtures import copy_run, run_cli, shared_run

from rsvision.analysis import evaluate as evaluations
from rsvision.analysis.calibrate import calibrate_run
from rsvision.analysis.evaluate import cached_evaluation
from rsvision.analysis.plot import MARKERS, plot_data
from rsvision.run.files import EVALUATIONS
from rsvision.run.folder import load_artifact

pytestmark = pytest.mark.filterwarnings("ignore:resolution .* is outside the trained range")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    return {"rs": shared_run(tmp_path_factory, [32, 8]), 32: shared_run(tmp_path_factory, [32], 1), 8: shared_run(tmp_path_factory, [8], 1)}


def _no_evaluation(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(evaluations, "evaluate_artifact", refuse)


def test_plot_draws_what_eval_measured(runs, tmp_path, capsys, monkeypatch):
    run = copy_run(runs["rs"], tmp_path / "run")
    calibrate_run(run, [24], images=32)
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--res", "8:40:8", "--json"], capsys)
    assert code == 0, err
    measured = {row["resolution"]: row for row in json.loads(out)["results"]}
    assert list(measured) == [8, 16, 24, 32, 40]
    assert (run / EVALUATIONS).is_file()

    _no_evaluation(monkeypatch)  # everything below comes from evaluations.json
    for name in ("fig.png", "fig.svg"):
        code, out, err = run_cli(["plot", str(run), "--res", "8:40:8", "-o", str(tmp_path / name), "--label", "RS-Net", "--json"], capsys)
        assert code == 0, err
    data = json.loads(out)
    (curve,) = data["curves"]
    assert data["metric"] == "top1" and curve["label"] == "RS-Net"
    for point in curve["points"]:
        row = measured[point["resolution"]]
        assert (point["value"], point["madds"], point["status"]) == (row["top1"], row["madds"], row["status"])
    assert {p["resolution"]: p["status"] for p in curve["points"]} == {
        8: "trained", 16: "interpolated", 24: "calibrated", 32: "trained", 40: "nearest"
    }
    assert len(set(MARKERS.values())) == len(MARKERS)  # each status is drawn its own way
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert {(f.stat().st_mode & 0o777) for f in (tmp_path / "fig.png", run / EVALUATIONS)} == {0o666 & ~umask}
    assert ET.parse(tmp_path / "fig.svg").getroot().tag.endswith("svg")


def test_kept_evaluations_follow_the_calibration(runs, tmp_path):
    run = copy_run(runs["rs"], tmp_path / "run")
    (before,) = cached_evaluation(load_artifact(run), [24])
    assert before["status"] == "interpolated"
    calibrate_run(run, [24], images=32)
    (after,) = cached_evaluation(load_artifact(run), [24])
    assert after["status"] == "calibrated"
    assert json.loads((run / EVALUATIONS).read_text())["entries"][0]["rows"]["24"]["status"] == "calibrated"


def test_inets_and_imax_curves(runs, tmp_path):
    rs, i32, i8 = (copy_run(runs[k], tmp_path / str(k)) for k in ("rs", 32, 8))
    data = plot_data([rs, i32], [[i8, i32]], resolutions=[8, 16, 32])
    assert [c.label for c in data.curves] == ["rs", "I-32", "I-Nets"]
    rs_curve, imax, inets = data.curves
    assert [(p.resolution, p.status) for p in imax.points] == [(8, "nearest"), (16, "nearest"), (32, "trained")]
    assert [(p.resolution, p.status) for p in inets.points] == [(8, "trained"), (32, "trained")]
    assert inets.points[0].madds < inets.points[1].madds
    assert [p.value for p in inets.points] == [r["top1"] for r in (cached_evaluation(load_artifact(i8), [8])[0], cached_evaluation(load_artifact(i32), [32])[0])]


@pytest.mark.parametrize(
    "args, message",
    [
        (["plot", "{rs}", "-o", "{tmp}/fig.jpg"], "fig.jpg: the output must end in .png or .svg"),
        (["plot", "{tmp}/absent", "-o", "{tmp}/fig.png"], "absent: no such run folder or file"),
        (["plot", "--inets", "{rs},{i8}", "-o", "{tmp}/fig.png"], "an I-Net is a single-resolution run"),
        (["plot", "--inets", "{i8},{i8}", "-o", "{tmp}/fig.png"], "a second I-Net at resolution 8"),
        (["plot", "{rs}", "-o", "{tmp}/fig.png", "--label", "a", "--label", "b"], "--label: more labels (2) than curves (1)"),
        (["plot", "{rs}", "-o", "{tmp}/fig.png", "--res", "64:32:16"], "--res 64:32:16: the stop (32) is below the start (64)"),
        (["plot", "-o", "{tmp}/fig.png"], "give at least one run"),
    ],
)
def test_bad_plot_input_is_one_line(runs, tmp_path, capsys, args, message):
    names = {"rs": runs["rs"], "i8": runs[8], "tmp": tmp_path}
    code, _, err = run_cli([a.format(**names) for a in args], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fig.png").exists()
