"""``eval RUN --data OTHER``: data with another class set is refused, not scored against the wrong names."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from det_fixtures import write_coco

from rsvision.analysis.evaluate import check_classes
from rsvision.cli import main
from rsvision.engine.trainer import train
from rsvision.errors import UserError
from rsvision.recipe import validate_recipe

HEAD = {"fpn_channels": 8, "anchor_sizes": [8, 16, 32, 64], "box_representation": 16, "rpn_pre_nms_top_n_train": 20, "rpn_post_nms_top_n_train": 10,
        "rpn_pre_nms_top_n_test": 20, "rpn_post_nms_top_n_test": 10, "box_batch_size_per_image": 8}  # fmt: skip
BOX = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 8, 4]}


def test_eval_on_data_with_other_categories_is_refused(tmp_path, capsys):
    for split in ("train", "val"):
        write_coco(tmp_path / "coco", [BOX], split=split)  # categories 3 'ant', 7 'cat'
    recipe = {
        "task": "det", "resolutions": [32],
        "model": {"backbone": "resnet8", "backbone_args": {"width": 4, "stem_stride": 4}, "head": "fasterrcnn", "num_classes": 2, "head_args": HEAD},
        "data": {"dataset": "coco", "root": str(tmp_path / "coco"), "normalize": False, "batch_size": 1, "workers": 0, "args": {"masks": False}},
        "train": {"epochs": 1, "lr": 0.01, "max_steps_per_epoch": 1, "channels_last": False}, "output_dir": str(tmp_path / "runs"),
    }  # fmt: skip
    run = train(validate_recipe(recipe), name="det", quiet=True)
    other = tmp_path / "other"
    for split in ("train", "val"):
        path = write_coco(other, [BOX], split=split)
        data = json.loads(path.read_text())
        data["categories"] = [{"id": 7, "name": "cat"}, {"id": 3, "name": "bee"}]
        path.write_text(json.dumps(data))
    evaluations = sorted(p.name for p in run.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(run), "--data", str(other)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"{other}: its classes (bee, cat) are not those {run} was trained on (ant, cat)" in err
    assert sorted(p.name for p in run.iterdir()) == evaluations  # nothing stored
    main(["eval", str(run), "--data", str(tmp_path / "coco")])  # the run's own classes: evaluated


def _artifact(trained: list[str] | None, data: list[str]) -> SimpleNamespace:
    recipe = SimpleNamespace(data=SimpleNamespace(root="data/other", dataset="coco"))
    return SimpleNamespace(meta={"class_names": trained}, task=SimpleNamespace(class_names=lambda: data, recipe=recipe), path="runs/det")


@pytest.mark.parametrize(
    "trained, data, refused",
    [
        (["ant", "cat"], ["ant", "cat"], False),
        (["ant", "cat"], ["ant"], False),  # the run's first classes: label 1 is 'ant' in both
        (["ant", "cat"], ["cat"], True),  # label 1 would be 'cat' here, 'ant' in the run
        (["ant", "cat"], ["ant", "cat", "bee"], True),
        (["0", "1", "2"], ["class0", "class1"], False),  # numbers only (a converted checkpoint): nothing to compare
        (None, ["ant"], False),
    ],
)
def test_class_set_rule(trained, data, refused):
    if refused:
        with pytest.raises(UserError, match=rf"data/other: its classes \({', '.join(data)}\) are not those runs/det was trained on"):
            check_classes(_artifact(trained, data))
    else:
        check_classes(_artifact(trained, data))
