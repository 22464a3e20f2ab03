"""Registry (names, duplicates, plugins) and recipe validation messages."""


import pytest
import torch
import yaml
from conftest import plugin_backbone_source, tiny_recipe_dict

from rsvision import list_backbones, load_plugins
from rsvision.errors import RegistryError, UserError
from rsvision.models import build_model
from rsvision.recipe import load_recipe, validate_recipe
from rsvision.registry import BACKBONES, Registry


def test_duplicate_name_is_an_error_unless_override():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("a")(lambda: 2)
    reg.register("a", override=True)(lambda: 3)
    assert reg.build("a") == 3


def test_unknown_name_lists_close_matches():
    with pytest.raises(RegistryError, match="did you mean 'resnet18'"):
        BACKBONES.get("resnet19")


def test_list_filters_with_a_pattern():
    assert list_backbones("resnet1*") == ["resnet101", "resnet14", "resnet18", "resnet18_cifar"]


def test_backbone_from_a_user_module_is_used_by_name(tmp_path, monkeypatch, clean_plugins):
    (tmp_path / "user_backbones.py").write_text(plugin_backbone_source("user_tiny"))
    monkeypatch.chdir(tmp_path)
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, model={"backbone": "user_tiny", "num_classes": 3}, plugins=["user_backbones"]))
    load_plugins(recipe.plugins)
    model = build_model(recipe)
    assert "user_tiny" in list_backbones()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert sorted(model.body.backbone.body[1].groups) == ["12", "16", "8"]


def test_missing_plugin_module():
    with pytest.raises(UserError, match="plugin 'no_such_module': module not found"):
        load_plugins(["no_such_module"])


def _write(tmp_path, data) -> str:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_bad_field_message_names_file_field_and_expectation(tmp_path):
    data = tiny_recipe_dict(tmp_path)
    data["train"]["lr"] = "abc"
    path = _write(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: train.lr: expected a number, got 'abc'"


def test_unknown_key_suggests_the_right_one(tmp_path):
    data = tiny_recipe_dict(tmp_path)
    data["train"]["epoch"] = 3
    with pytest.raises(UserError, match=r"train\.epoch: unknown key; did you mean 'epochs'\?"):
        load_recipe(_write(tmp_path, data))


def test_missing_file_and_missing_field(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    data = tiny_recipe_dict(tmp_path)
    del data["model"]["backbone"]
    with pytest.raises(UserError, match=r"model\.backbone: missing required field"):
        load_recipe(_write(tmp_path, data))


def test_overrides_apply_before_validation(tmp_path):
    path = _write(tmp_path, tiny_recipe_dict(tmp_path))
    recipe = load_recipe(path, ["train.epochs=7", "resolutions=[8, 16]", "mred.mode=vanilla", "model.backbone_args.width=8"])
    assert recipe.train.epochs == 7
    assert recipe.resolutions == [16, 8]  # kept largest first
    assert recipe.mred.mode == "vanilla"
    assert recipe.model.backbone_args == {"width": 8}
    assert load_recipe(path, ["mred.mode=off"]).mred.mode == "off"  # YAML's bare off is false
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(UserError, match=r"mred\.mode: expected one of full"):
        load_recipe(path, ["mred.mode=strong"])


def test_shipped_recipes_validate():
    from pathlib import Path

    recipes = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(path)


def test_the_imagenet_recipes_train_in_bf16():
    from pathlib import Path

    recipes = sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*imagenet*.yaml"))
    assert len(recipes) == 4
    assert all(load_recipe(path).train.mixed_precision == "bf16" for path in recipes)


def test_each_task_validates_its_own_data_fields(tmp_path):
    """``crop_scale`` belongs to ``cls``, ``scale_range`` to ``seg``: each task checks its own
    fields (type, order, typos) and fills in their defaults."""
    from rsvision.registry import TASKS, load_builtins

    load_builtins()
    data = tiny_recipe_dict(tmp_path)
    del data["data"]["crop_scale"]
    task = TASKS.get("cls")(validate_recipe(data, "r.yaml"))
    assert task.fields.crop_scale == (0.08, 1.0) and task.recipe.data.crop_scale == (0.08, 1.0)
    assert "data.crop_scale" in task.recipe_fields and "data.scale_range" not in task.recipe_fields
    for bad, message in [
        ({"crop_scal": [0.5, 1.0]}, "r.yaml: data.crop_scal: unknown key; did you mean 'crop_scale'?"),
        ({"crop_scale": [1.0, 0.5]}, "r.yaml: data.crop_scale: expected 0 < low <= high, got [1.0, 0.5]"),
        ({"multi_crop": True, "resize": "batch"}, "r.yaml: data: multi_crop draws a crop per resolution, so it needs resize: sample"),
    ]:
        data = tiny_recipe_dict(tmp_path)
        data["data"].update(bad)
        with pytest.raises(UserError) as err:
            TASKS.get("cls")(validate_recipe(data, "r.yaml"))
        assert str(err.value) == message
    data = tiny_recipe_dict(tmp_path)
    data["data"].update(multi_crop=True)  # resize not given: per-sample resizing follows
    assert TASKS.get("cls")(validate_recipe(data, "r.yaml")).recipe.data.resize == "sample"
    data["data"].update(multi_crop=False, scale_range=[0.5, 2.0])  # a saved recipe of an earlier version: read, not used
    assert TASKS.get("cls")(validate_recipe(data, "r.yaml")).fields.multi_crop is False
