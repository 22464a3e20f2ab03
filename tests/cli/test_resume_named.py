"""``train --resume RUN_DIR``: a named run folder continues (not only the newest run), changed
recipe fields are refused and listed unless ``--allow-changes``, and a finished run says so
in one line (exit 0) instead of silently doing nothing."""

import json

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_recipe_dict

from rsvision.cli import cli


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def two_runs(tmp_path, one_thread):
    """(recipe, older run, newer run): two finished one-epoch runs of one recipe."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 2})))
    runs = []
    for _ in range(2):
        code, out, err = _invoke("train", recipe, "--quiet")
        assert code == 0, err
        runs.append(tmp_path / out.strip())
    return recipe, *runs


def test_a_finished_run_says_so_in_one_line_and_exits_0(two_runs):
    recipe, older, newer = two_runs
    code, out, err = _invoke("train", "--resume", older)
    assert code == 0 and out == ""
    assert err.strip() == f"{older}: finished (1 of 1 epochs); nothing to resume"
    code, _, err = _invoke("train", recipe, "--resume")  # the latest run of the recipe
    assert code == 0 and err.strip() == f"{newer}: finished (1 of 1 epochs); nothing to resume"


def test_changed_fields_are_refused_and_listed(two_runs):
    recipe, older, _ = two_runs
    code, _, err = _invoke("train", recipe, "--resume", older, "--set", "train.epochs=2", "--set", "train.lr=0.1")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --resume {older}: the recipe differs from the run's in 2 field(s)")
    assert "train.epochs: 1 -> 2" in line and "train.lr: 0.05 -> 0.1" in line and "--allow-changes" in line
    assert _epochs(older) == [1]


def test_allow_changes_continues_the_named_run_not_the_newest(two_runs):
    _, older, newer = two_runs
    code, out, err = _invoke("train", "--resume", older, "--set", "train.epochs=2", "--allow-changes", "--quiet")
    assert code == 0, err
    assert out.strip() == str(older)
    assert "warning: --resume" in err and "train.epochs: 1 -> 2" in err
    assert _epochs(older) == [1, 2] and _epochs(newer) == [1]
    meta = json.loads((older / "rsvision.json").read_text())
    assert meta["complete"] and meta["epochs_done"] == 2


def test_where_the_run_is_read_and_written_is_not_a_change(two_runs, tmp_path):
    recipe, older, _ = two_runs
    code, _, err = _invoke("train", recipe, "--resume", older, "--set", "data.workers=1", "--set", f"output_dir={tmp_path / 'elsewhere'}")
    assert code == 0 and "nothing to resume" in err


def test_a_folder_without_a_training_state_is_one_line(tmp_path):
    code, _, err = _invoke("train", "--resume", tmp_path)
    assert code == 2 and err.strip().startswith(f"error: --resume {tmp_path}: no saved training state")
