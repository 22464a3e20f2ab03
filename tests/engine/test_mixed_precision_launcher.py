"""The launcher's mixed precision (`accelerate launch --mixed_precision`, or the one saved with
`accelerate config`, both passed as ACCELERATE_MIXED_PRECISION) is used unless the recipe sets
one, and the run says which won."""

import json

import pytest
from conftest import tiny_recipe_dict

from rsvision.engine import train
from rsvision.engine.trainer import mixed_precision
from rsvision.errors import UserError
from rsvision.recipe import validate_recipe


def _recipe(tmp_path, **train_cfg):
    return validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 1, **train_cfg}))


def test_the_launchers_precision_trains_the_run_and_is_recorded(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    recipe = _recipe(tmp_path)
    assert recipe.train.mixed_precision is None
    run = train(recipe, name="launched", quiet=True)
    meta = json.loads((run / "rsvision.json").read_text())
    assert meta["mixed_precision"] == {"precision": "bf16", "source": "launcher (ACCELERATE_MIXED_PRECISION)"}
    assert meta["recipe"]["train"]["mixed_precision"] == "bf16"  # inference follows the precision trained in
    assert json.loads((run / "recipe.json").read_text())["train"]["mixed_precision"] == "bf16"


def test_the_recipes_precision_wins_over_the_launchers(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert mixed_precision(_recipe(tmp_path, mixed_precision="no")) == ("no", "recipe (train.mixed_precision); the launcher's bf16 is not used")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert mixed_precision(_recipe(tmp_path, mixed_precision="bf16")) == ("bf16", "recipe (train.mixed_precision)")
    assert mixed_precision(_recipe(tmp_path))[0] == "no"


def test_an_unknown_launcher_precision_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(UserError, match="ACCELERATE_MIXED_PRECISION=fp8"):
        mixed_precision(_recipe(tmp_path))
