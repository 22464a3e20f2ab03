"""What a user really gets wrong, and the one line rsvision answers with (exit 2, nothing lost)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from rsvision.artifacts import find_latest_run
from rsvision.cli import main
from rsvision.engine import TrainingDiverged, train
from rsvision.recipe import validate_recipe
from rsvision.training import MREDTraining
from conftest import tiny_recipe_dict


def _recipe_file(tmp_path, data: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _run(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return exit_info.value.code, " ".join(err.split())


def _one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, err


def _image_folder(root: Path, train_classes, val_classes, size=(20, 20)) -> None:
    for split, classes in (("train", train_classes), ("val", val_classes)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", size, color=(40 * i, 0, 0)).save(root / split / c / f"{i}.png")


def test_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe_file(tmp_path, tiny_recipe_dict(tmp_path))
    code, err = _run(["train", recipe, "--quiet", "--set", "train.lr=1e6"], capsys)
    _one_line(code, err, "bad.yaml: training diverged at epoch 1, step", "lower train.lr", "nothing was saved")
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "rsvision.json").exists()  # nothing that looks like a trained run


def test_divergence_after_an_epoch_keeps_it_and_marks_the_run_unfinished(tmp_path, monkeypatch):
    real = MREDTraining.forward
    calls = [0]

    def forward(self, batch):
        calls[0] += 1
        out = real(self, batch)
        if calls[0] > 8:  # epoch 2 (6 steps an epoch)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MREDTraining, "forward", forward)
    recipe = validate_recipe(tiny_recipe_dict(tmp_path))
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3: the loss is nan.*keeps epoch 1"):
        train(recipe, name="nan", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run / "rsvision.json").read_text())
    assert meta["epochs_done"] == 1 and meta["complete"] is False
    with pytest.raises(Exception, match="no finished run"):
        find_latest_run(tmp_path / "runs")
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_more_classes_in_the_data_than_the_network_predicts(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path)
    data["data"]["args"]["num_classes"] = 6  # the network predicts 4
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet"], capsys)
    _one_line(code, err, "model.num_classes is 4 but the train data of 'synthetic' has 6 classes")


def test_validation_class_missing_from_training(tmp_path, capsys):
    _image_folder(tmp_path / "data", ["a", "b"], ["a", "c"])
    data = tiny_recipe_dict(tmp_path, data={"dataset": "imagefolder", "root": str(tmp_path / "data"), "batch_size": 2, "workers": 0})
    data["model"]["num_classes"] = 2
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet"], capsys)
    _one_line(code, err, "class folder(s) c do not exist in", "training classes: a, b")


def test_validation_classes_keep_the_training_indices(tmp_path):
    from rsvision.registry import DATASETS

    _image_folder(tmp_path, ["a", "b", "c"], ["b", "c"])
    val = DATASETS.build("imagefolder", root=str(tmp_path), split="val")
    assert val.classes == ["a", "b", "c"] and sorted({y for _, y in val.samples}) == [1, 2]


def test_arguments_the_dataset_does_not_take(tmp_path, capsys):
    _image_folder(tmp_path / "data", ["a", "b"], ["a", "b"])
    data = tiny_recipe_dict(tmp_path)
    data["data"].update(dataset="imagefolder", root=str(tmp_path / "data"))  # the synthetic args stay
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet"], capsys)
    _one_line(code, err, "data.args: dataset 'imagefolder' does not take 'image_size', 'num_classes', 'train_size', 'val_size'", "(it takes: root, split)")


def test_arguments_the_backbone_does_not_take(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path)
    data["model"]["backbone_args"]["depth"] = 3
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet"], capsys)
    _one_line(code, err, "model.backbone_args: backbone 'resnet8' does not take 'depth' (it takes: width, stem_stride)")


@pytest.mark.parametrize(
    "source, message",
    [
        ("def broken(:\n", "plugin 'parts.py': SyntaxError at parts.py:1"),
        ("import math\nraise ValueError('no GPU here')\n", "plugin 'parts.py': raised ValueError at parts.py:2 while being imported: no GPU here"),
    ],
)
def test_plugin_that_fails_to_import_is_named(tmp_path, capsys, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parts.py").write_text(source)
    code, err = _run(["list", "--plugin", "parts.py"], capsys)
    _one_line(code, err, message)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("data", "scale_range", [0.5, 2.0], "data.scale_range: task 'cls' does not use it"),
        ("train", "milestones", [1], "train.milestones: only read when train.schedule is 'step' (it is 'cosine')"),
        ("train", "momentum", 0.9, "train.momentum: only read when train.optimizer is 'sgd' (it is 'adamw')"),
    ],
)
def test_recipe_keys_that_nothing_reads(tmp_path, capsys, section, key, value, message):
    data = tiny_recipe_dict(tmp_path)
    data[section][key] = value
    if key == "momentum":
        data["train"]["optimizer"] = "adamw"
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet"], capsys)
    _one_line(code, err, f"bad.yaml: {message}")


def test_segmentation_refuses_classification_crop_keys(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path)
    data.update(task="seg", resolutions=[32, 16])
    data["model"] = {"backbone": "resnet8", "head": "unet", "num_classes": 6, "backbone_args": {"width": 4}}
    data["data"] = {"dataset": "synthetic_seg", "batch_size": 2, "workers": 0, "crop_scale": [0.5, 1.0], "args": {"train_size": 4, "val_size": 2}}
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet"], capsys)
    _one_line(code, err, "data.crop_scale: task 'seg' does not use it")


def test_adamw_is_read(tmp_path):
    run = train(validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 1, "optimizer": "adamw", "lr": 1e-3})), name="adamw", quiet=True)
    assert json.loads((run / "rsvision.json").read_text())["recipe"]["train"]["optimizer"] == "adamw"


def test_eval_of_a_run_of_another_task(tmp_path, capsys):
    run = train(validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 1})), name="cls", quiet=True)
    code, err = _run(["eval", "--task", "seg", "--checkpoint", str(run)], capsys)
    _one_line(code, err, "a 'cls' run, not 'seg'")


def test_one_channel_normalisation_must_match(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path)
    data["model"]["in_channels"] = 1  # ImageNet's three means stay
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet"], capsys)
    _one_line(code, err, "data.mean has 3 values but model.in_channels is 1")


def test_duplicate_and_bad_resolutions_on_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(["profile", "--backbone", "resnet8", "--res", "32", "32"], capsys)
    _one_line(code, err, "--res: a size is given twice")
    code, err = _run(["profile", "--backbone", "resnet8", "--res", "0"], capsys)
    _one_line(code, err, "--res: expected positive sizes")


def test_non_square_inputs(tmp_path):
    from rsvision import create_model

    model = create_model(backbone="resnet8", num_classes=3, resolutions=[32, 16], backbone_args={"width": 4})
    with pytest.raises(ValueError, match="training inputs must be square"):
        model(torch.zeros(2, 3, 32, 16))
    model.eval()
    with pytest.warns(UserWarning, match=r"input 20x40 is not square: running at resolution 28"):
        model(torch.zeros(1, 3, 20, 40))


def test_command_line_usage_errors_are_one_line(tmp_path, capsys):
    code, err = _run(["calibrate", str(tmp_path), "--images", "abc"], capsys)
    _one_line(code, err, "Invalid value for '--images': 'abc' is not a valid integer", "(see `rsvision calibrate --help`)")
    code, err = _run(["train"], capsys)
    _one_line(code, err, "Missing argument 'RECIPE'")
    code, err = _run(["fly"], capsys)
    _one_line(code, err, "No such command 'fly'")
