"""Output streams: tables and results on stdout, progress and logs on stderr; ``train --quiet``
prints the run folder, ``train --json`` its results; ``export`` picks its format by run type;
every line of ``rsvision --help`` whole."""

import json

import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_recipe_dict

from rsvision.cli import cli


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streams")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp, train={"epochs": 1, "max_steps_per_epoch": 2})))
    return path


@pytest.fixture(scope="module")
def trained(recipe, one_thread):
    """(run folder, stdout, stderr) of a plain ``rsvision train``."""
    code, out, err = _invoke("train", recipe)
    assert code == 0, err
    (run,) = (recipe.parent / "runs").iterdir()
    return run, out, err


def test_train_prints_its_table_and_run_folder_on_stdout_and_progress_on_stderr(trained):
    run, out, err = trained
    assert "Results per sub-network" in out and "ensemble" in out
    assert out.rstrip().endswith(f"run folder: {run}")
    assert "Results per sub-network" not in err
    assert "epoch 1 · loss" in err  # the per-epoch line is a log line


def test_train_quiet_prints_only_the_run_folder(recipe, one_thread):
    code, out, err = _invoke("train", recipe, "--quiet", "--set", "name=quiet")
    assert code == 0, err
    (run,) = (recipe.parent / "runs").glob("quiet-*")
    assert out == f"{run}\n"


def test_train_json_prints_the_run_and_its_results(recipe, one_thread):
    code, out, err = _invoke("train", recipe, "--json", "--set", "name=as_json")
    assert code == 0, err
    report = json.loads(out)
    (run,) = (recipe.parent / "runs").glob("as_json-*")
    assert report["run"] == str(run) and report["complete"] and report["epochs_done"] == 1
    assert [r["subnet"] for r in report["results"]] == ["16", "12", "8", "ensemble"]
    assert report["results"][0]["madds"] > report["results"][2]["madds"] > 0


def test_export_of_a_float_run_defaults_to_onnx(trained, tmp_path):
    run, _, _ = trained
    code, out, err = _invoke("export", run, "-o", tmp_path / "onnx", "--res", "16")
    assert code == 0, err
    assert (tmp_path / "onnx" / "manifest.json").is_file()


def test_export_lq_of_a_float_run_points_to_onnx(trained, tmp_path):
    run, _, _ = trained
    code, _, err = _invoke("export", run, "--format", "lq", "-o", tmp_path / "run.lq")
    assert code == 2 and "the model is not quantized" in err and "--format onnx" in err


def test_every_command_has_a_whole_line_in_the_help():
    code, out, _ = _invoke("--help")
    assert code == 0
    listed = out.split("Commands:", 1)[1].splitlines()
    for name, command in cli.commands.items():
        (line,) = [line for line in listed if line.split()[:1] == [name]]
        assert command.short_help, f"{name}: give the command a short_help (click cuts a docstring's first line at a full stop or at the width)"
        assert line.split(None, 1)[1] == command.short_help, line
        assert not line.endswith("..."), line
