"""Experiment tracking (`train.log_with`): TensorBoard and CSV in the run folder, one value per
epoch and sub-network; wall time and timestamps in log.jsonl; the training-curve plot."""

import csv
import json
from datetime import datetime

import pytest
from conftest import tiny_recipe_dict

from rsvision.engine import train
from rsvision.engine.tracking import CSVTracker, epoch_values
from rsvision.errors import UserError
from rsvision.recipe import validate_recipe

SUBNETS = ["16", "12", "8", "ensemble"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("tracked")
    recipe = validate_recipe(tiny_recipe_dict(tmp, train={"epochs": 2, "max_steps_per_epoch": 2, "log_with": ["tensorboard", "csv"]}))
    return train(recipe, name="tracked", quiet=True)


def test_tensorboard_has_one_value_per_epoch_and_subnetwork(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    for subnet in SUBNETS:
        assert [e.step for e in events.Scalars(f"top1/{subnet}")] == [1, 2]
    for resolution in ("16", "12", "8"):
        assert [e.step for e in events.Scalars(f"train_ce/{resolution}")] == [1, 2]
    assert {"loss", "lr", "epoch_seconds"} <= tags
    log = [json.loads(line) for line in (tracked / "log.jsonl").read_text().splitlines()]
    top1 = {row["subnet"]: row["top1"] for row in log[-1]["val"]}
    assert events.Scalars("top1/12")[-1].value == pytest.approx(top1["12"])


def test_csv_has_one_row_per_epoch_and_subnetwork(tracked):
    with (tracked / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["subnet"]) for r in rows] == [(str(e), s) for e in (1, 2) for s in ["16", "12", "8", "ensemble"]]
    assert rows[0]["train_ce"] != "" and rows[0]["top1"] != "" and rows[0]["lr"] != ""
    assert rows[3]["train_ce"] == ""  # the ensemble is evaluated, not trained


def test_log_lines_carry_wall_time_and_a_timestamp(tracked):
    log = [json.loads(line) for line in (tracked / "log.jsonl").read_text().splitlines()]
    assert all(e["epoch_seconds"] > 0 for e in log)
    times = [datetime.fromisoformat(e["time"]) for e in log]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)


def test_csv_rewrites_itself_when_a_column_appears(tmp_path):
    tracker = CSVTracker(tmp_path)
    tracker.log(epoch_values({"epoch": 1, "loss": 2.0, "ce/16": 1.5}, {"16"}), step=1)
    tracker.log(epoch_values({"epoch": 2, "loss": 1.0, "ce/16": 0.5, "val": [{"subnet": "16", "resolution": 16, "top1": 50.0}]}, {"16"}), step=2)
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"epoch": "1", "subnet": "16", "loss": "2.0", "train_ce": "1.5", "top1": ""},
        {"epoch": "2", "subnet": "16", "loss": "1.0", "train_ce": "0.5", "top1": "50.0"},
    ]


def test_keys_that_name_no_subnetwork_stay_the_runs():
    assert epoch_values({"epoch": 3, "students/weight": 0.5, "acc/full": 40.0, "loss/160w50": 1.0, "frozen": True}, {"160w50"}) == {
        "students_weight": 0.5, "acc_full": 40.0, "train_loss/160w50": 1.0,
    }


def test_an_unknown_tracker_is_one_line(tmp_path):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 1, "log_with": ["tensorbored"]}))
    with pytest.raises(UserError, match="train.log_with: unknown tracker 'tensorbored'"):
        train(recipe, name="bad", quiet=True)


def test_plot_curves_draws_loss_and_accuracy_per_subnetwork(tracked, tmp_path, capsys):
    from rsvision.cli import main

    figure = tmp_path / "curves.png"
    main(["plot", str(tracked), "--curves", "-o", str(figure), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert figure.stat().st_size > 0 and data["figure"] == str(figure)
    assert data["metric"] == "top1"
    assert list(data["loss"]) == ["16", "12", "8"] and [e for e, _ in data["loss"]["8"]] == [1, 2]
    assert list(data["accuracy"]) == SUBNETS and [e for e, _ in data["accuracy"]["ensemble"]] == [1, 2]
