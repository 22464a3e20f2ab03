"""model.num_classes: left out, the data's class count; given, it must equal the data's."""

import numpy as np
import pytest
from conftest import tiny_recipe_dict
from det_fixtures import polygon, write_coco
from PIL import Image

from rsvision.errors import UserError
from rsvision.models import build_model
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS


def _task(tmp_path, num_classes=None, data=None, task="cls"):
    model = {"backbone": "resnet8", "backbone_args": {"width": 4}}
    if num_classes is not None:
        model["num_classes"] = num_classes
    recipe = tiny_recipe_dict(tmp_path, task=task, model=model, **({"data": data} if data else {}))
    return TASKS.get(task)(validate_recipe(recipe))


def test_left_out_it_is_the_synthetic_datas_class_count(tmp_path):
    task = _task(tmp_path)  # synthetic data with 4 classes
    model = task.build_model()
    assert model.body.head.fc.out_features == 4  # not a 1000-way head
    assert task.recipe.model_dump(mode="json")["model"]["num_classes"] == 4  # what the run folder keeps


def test_left_out_it_is_the_image_folders_class_count(tmp_path):
    for name in ("ant", "bee", "cat"):
        folder = tmp_path / "images" / "train" / name
        folder.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    task = _task(tmp_path, data={"dataset": "imagefolder", "root": str(tmp_path / "images"), "workers": 0})
    assert task.build_model().body.head.fc.out_features == 3


def test_left_out_it_is_the_coco_category_count(tmp_path):
    write_coco(tmp_path / "coco", [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 8, 4], "segmentation": polygon(2, 3, 10, 7)}])
    task = _task(tmp_path, data={"dataset": "coco", "root": str(tmp_path / "coco"), "workers": 0}, task="det")
    assert task.resolve_num_classes() == 2  # categories 'cat' and 'ant'


@pytest.mark.parametrize("given", [6, 3])
def test_a_given_count_the_data_contradicts_either_way_is_refused(tmp_path, given):
    task = _task(tmp_path, num_classes=given)
    with pytest.raises(UserError, match=rf"model\.num_classes is {given} but the train data of 'synthetic' has 4 classes"):
        task.train_dataset()


def test_a_recipe_without_a_task_needs_the_count(tmp_path):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, model={"backbone": "resnet8"}))
    with pytest.raises(UserError, match=r"model\.num_classes is not set; the task takes it from the data"):
        build_model(recipe)
