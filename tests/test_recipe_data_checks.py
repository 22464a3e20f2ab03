"""Recipes refused when validated, before a loader starts or a run folder is made: a dataset of
another task, a training size over ``max_resolution``."""

from __future__ import annotations

import pytest
import yaml
from conftest import tiny_recipe_dict

from rsvision.cli import main
from rsvision.errors import UserError
from rsvision.recipe import validate_recipe


def _train(tmp_path, data: dict, capsys) -> tuple[int, str]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--quiet"])
    return exit_info.value.code, capsys.readouterr().err


def test_a_classification_recipe_on_detection_data_is_refused_before_loading(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path)
    data["model"]["num_classes"] = 3  # the detection set's, so only the pairing is wrong
    data["data"] = {**data["data"], "dataset": "synthetic_det", "workers": 2, "args": {"train_size": 16, "val_size": 4, "canvas": 32, "min_item": 4, "max_item": 12}}
    code, err = _train(tmp_path, data, capsys)
    assert code == 2
    assert "recipe.yaml: data.dataset: 'synthetic_det' gives samples for task 'det', not 'cls'; datasets for 'cls': cifar10, cifar100, imagefolder, mnist, synthetic" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("task, dataset, served", [("det", "synthetic", "cls"), ("seg", "coco", "det"), ("cls", "nyudv2", "seg")])
def test_every_task_and_dataset_mismatch_is_refused(tmp_path, task, dataset, served):
    data = tiny_recipe_dict(tmp_path)
    data["task"], data["data"] = task, {"dataset": dataset}
    with pytest.raises(UserError, match=rf"data\.dataset: '{dataset}' gives samples for task '{served}', not '{task}'"):
        validate_recipe(data, "r.yaml")


def test_a_task_no_dataset_declares_takes_any_dataset(tmp_path):
    data = tiny_recipe_dict(tmp_path)
    data["task"] = "my_plugin_task"  # a plugin's task may read a built-in dataset its own way
    assert validate_recipe(data).data.dataset == "synthetic"


def test_a_training_size_over_max_resolution_is_refused_before_anything_is_written(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path, resolutions=[64, 48, 20000])
    code, err = _train(tmp_path, data, capsys)
    assert code == 2
    assert "recipe.yaml: resolutions: 20000 is above max_resolution (2048); set max_resolution: 20000 if that size is meant" in err
    assert not (tmp_path / "runs").exists()
    assert validate_recipe({**data, "max_resolution": 20000}).resolutions == [20000, 64, 48]
    assert validate_recipe(tiny_recipe_dict(tmp_path, resolutions=[2048, 64])).max_resolution == 2048
