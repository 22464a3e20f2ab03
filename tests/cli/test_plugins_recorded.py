"""Plugins recorded in the run: a run trained with a plugin backbone (``--plugin`` or the
recipe's ``plugins:``, relative to the recipe) is evaluated, exported and loaded from any
folder without ``--plugin``; an unknown backbone in a run names the plugin it was trained with."""

import json
import sys

import pytest
import yaml
from click.testing import CliRunner
from conftest import plugin_backbone_source, tiny_recipe_dict

import rsvision
from rsvision import registry
from rsvision.cli import cli
from rsvision.io import file_sha256

PLUGIN = plugin_backbone_source("tinynet")


def _invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _forget_the_plugin() -> None:
    """What a new process knows: no ``tinynet``, no imported plugin module."""
    registry.BACKBONES._entries.pop("tinynet", None)
    for name in [n for n in sys.modules if n.startswith("rsvision_plugin_")]:
        del sys.modules[name]


@pytest.fixture
def project(tmp_path, monkeypatch, one_thread):
    """``proj/recipe.yaml`` with ``proj/tiny_parts.py`` beside it; the current folder is another one."""
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "tiny_parts.py").write_text(PLUGIN)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _forget_the_plugin()
    yield tmp_path
    _forget_the_plugin()


def _recipe(tmp_path, **extra) -> dict:
    data = tiny_recipe_dict(tmp_path, model={"backbone": "tinynet", "num_classes": 4}, train={"epochs": 1, "max_steps_per_epoch": 2})
    return {**data, **extra}


def _train(*args) -> str:
    code, out, err = _invoke("train", *args, "--quiet")
    assert code == 0, err
    return out.strip()


def test_recipe_plugins_resolve_next_to_the_recipe_and_the_run_keeps_a_copy(project):
    recipe = project / "proj" / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(project, plugins=["tiny_parts.py"])))
    run = _train(recipe)
    meta = json.loads((project / run / "rsvision.json").read_text())
    (record,) = meta["plugins"]
    assert record["file"] == "plugins/tiny_parts.py" and record["source"] == str(project / "proj" / "tiny_parts.py")
    assert record["sha256"] == file_sha256(project / "proj" / "tiny_parts.py") == file_sha256(project / run / "plugins" / "tiny_parts.py")

    (project / "proj" / "tiny_parts.py").unlink()  # the run's copy is what later commands import
    _forget_the_plugin()
    code, out, err = _invoke("eval", run, "--json")
    assert code == 0, err
    assert [r["subnet"] for r in json.loads(out)["results"]] == ["16", "12", "8", "ensemble"]
    _forget_the_plugin()
    code, _, err = _invoke("export", run, "-o", project / "onnx", "--res", "16")
    assert code == 0, err
    _forget_the_plugin()
    assert rsvision.load(run, device="cpu") is not None


def test_a_cli_plugin_is_recorded_and_later_commands_need_no_plugin(project):
    recipe = project / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(project)))
    run = _train(recipe, "--plugin", project / "proj" / "tiny_parts.py")
    _forget_the_plugin()
    code, _, err = _invoke("eval", run)
    assert code == 0, err


def test_an_unknown_backbone_names_the_plugin_the_run_was_trained_with(project):
    recipe = project / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(project)))
    plugin = project / "proj" / "tiny_parts.py"
    run = _train(recipe, "--plugin", plugin)
    (project / run / "plugins" / "tiny_parts.py").unlink()
    moved = project / "moved.py"
    plugin.rename(moved)
    _forget_the_plugin()
    code, _, err = _invoke("eval", run)
    assert code == 2
    assert "unknown backbone 'tinynet'" in err and f"the run was trained with plugin {plugin}: pass it with --plugin" in err
    _forget_the_plugin()
    code, _, err = _invoke("eval", run, "--plugin", moved)
    assert code == 0, err


def test_a_plugin_given_later_wins_over_the_runs_copy(project):
    recipe = project / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(project)))
    run = _train(recipe, "--plugin", project / "proj" / "tiny_parts.py")
    fixed = project / "fixed_parts.py"
    fixed.write_text(PLUGIN)
    _forget_the_plugin()
    code, _, err = _invoke("eval", run, "--plugin", fixed)
    assert code == 0, err
    assert "warning: plugin " in err and "not imported, a --plugin registered its names first" in err


@pytest.mark.parametrize("command", ["eval", "calibrate", "export", "deploy", "predict", "query", "plot", "profile", "serve"])
def test_every_command_that_loads_a_run_takes_plugin(command):
    assert "--plugin" in [opt for p in cli.commands[command].params for opt in p.opts]


def test_plugin_paths_resolve_next_to_the_recipe_first(tmp_path, monkeypatch):
    from rsvision.run.plugins import resolve_plugins

    for folder in ("recipe_dir", "cwd"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "both.py").write_text("")
    (tmp_path / "recipe_dir" / "parts.py").write_text("")
    (tmp_path / "cwd" / "only_here.py").write_text("")
    monkeypatch.chdir(tmp_path / "cwd")
    base = tmp_path / "recipe_dir"
    assert resolve_plugins(["both.py", "only_here.py", "parts", "some.module", str(tmp_path / "x.py")], base) == [
        str(base / "both.py"), str(tmp_path / "cwd" / "only_here.py"), str(base / "parts.py"), "some.module", str(tmp_path / "x.py"),
    ]


def test_a_module_plugin_is_recorded_by_its_import_path_and_two_files_of_one_name_are_refused(tmp_path):
    from rsvision.errors import UserError
    from rsvision.run.plugins import record_plugins

    assert record_plugins(tmp_path, ["json"]) == [{"module": "json", "source": sys.modules["json"].__file__}]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "parts.py").write_text("")
    with pytest.raises(UserError, match="have the same file name; rename one of them"):
        record_plugins(tmp_path / "run", [str(tmp_path / "a" / "parts.py"), str(tmp_path / "b" / "parts.py")])
