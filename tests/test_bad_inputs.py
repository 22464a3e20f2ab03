"""What a user really gets wrong, and the one line rsvision answers with (exit 2, nothing lost)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from PIL import Image
from safetensors.torch import load_file

from rsvision.cli import main
from rsvision.engine import TrainingDiverged, train
from rsvision.recipe import validate_recipe
from rsvision.run.folder import find_latest_run
from rsvision.training import MREDTraining


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
    _one_line(code, err, "model.backbone_args: backbone 'resnet8' does not take 'depth' (it takes: width, stem_stride, init)")


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
    _one_line(code, err, "--res: 32 is given twice")
    code, err = _run(["profile", "--backbone", "resnet8", "--res", "0"], capsys)
    _one_line(code, err, "--res 0: sizes must be positive")


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
    _one_line(code, err, "train: give RECIPE", "rsvision recipes")
    code, err = _run(["fly"], capsys)
    _one_line(code, err, "No such command 'fly'")


def _width_run(tmp_path_factory) -> Path:
    """Width run (0.25-1.0) at 16 and 8 px, built once."""
    from deploy_fixtures import _once

    def build(tmp: Path) -> Path:
        recipe = tiny_recipe_dict(tmp, resolutions=[16, 8], widths={"range": [0.25, 1.0]}, train={"epochs": 1, "max_steps_per_epoch": 3})
        return train(validate_recipe(recipe), name="width", quiet=True)

    return _once("bad_inputs_width_run", tmp_path_factory, build)


def _two_class_run(tmp_path_factory) -> Path:
    from deploy_fixtures import _once

    def build(tmp: Path) -> Path:
        recipe = tiny_recipe_dict(tmp, resolutions=[16, 8], train={"epochs": 1, "max_steps_per_epoch": 3})
        recipe["model"]["num_classes"] = recipe["data"]["args"]["num_classes"] = 2
        return train(validate_recipe(recipe), name="two", quiet=True)

    return _once("bad_inputs_two_class_run", tmp_path_factory, build)


def _png(path: Path) -> Path:
    Image.new("RGB", (40, 40), color=(90, 20, 200)).save(path)
    return path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(
    "make_args, culprit",
    [
        (lambda cls, width, seg, tmp: ["eval", "--checkpoint", str(cls), "--res", "65"], "--res 65"),
        (lambda cls, width, seg, tmp: ["eval", "--checkpoint", str(width), "--res", "400", "--width", "0.5"], "--res 400"),
        (lambda cls, width, seg, tmp: ["calibrate", str(cls), "--res", "65", "--images", "8"], "--res 65"),
        (lambda cls, width, seg, tmp: ["calibrate", str(width), "--res", "65w50", "--images", "8"], "--res 65w50"),
        (lambda cls, width, seg, tmp: ["plot", str(cls), "--res", "32:80:16", "-o", str(tmp / "f.png")], "--res 80"),
        (lambda cls, width, seg, tmp: ["export", str(cls), "--format", "onnx", "--res", "65", "-o", str(tmp / "o")], "--res 65"),
        (lambda cls, width, seg, tmp: ["export", str(width), "--format", "onnx", "--subnet", "65w50", "-o", str(tmp / "o")], "--subnet 65w50"),
        (lambda cls, width, seg, tmp: ["profile", "--checkpoint", str(cls), "--res", "65", "--no-latency"], "--res 65"),
        (lambda cls, width, seg, tmp: ["predict", str(_png(tmp / "a.png")), "--checkpoint", str(seg), "--res", "257", "-o", str(tmp / "p")], "--res 257"),
    ],
)
def test_sizes_far_beyond_the_trained_ones_are_refused_up_front(tmp_path_factory, tmp_path, capsys, make_args, culprit):
    from deploy_fixtures import cls_run, seg_run

    runs = (cls_run(tmp_path_factory), _width_run(tmp_path_factory), seg_run(tmp_path_factory))
    before = [_files(run) for run in runs]
    code, err = _run(make_args(*runs, tmp_path), capsys)
    limit = "the limit is 256" if culprit == "--res 257" else "the limit is 64"
    _one_line(code, err, f"{culprit}: more than 4x the largest resolution", limit)
    assert [_files(run) for run in runs] == before
    assert _files(tmp_path) <= {"a.png"}


@pytest.mark.parametrize(
    "make_args, culprit",
    [
        (lambda cls, seg, tmp: ["eval", "--checkpoint", str(cls), "--batch-size", "0"], "'--batch-size': 0"),
        (lambda cls, seg, tmp: ["calibrate", str(cls), "--res", "12", "--batch-size", "0"], "'--batch-size': 0"),
        (lambda cls, seg, tmp: ["plot", str(cls), "--batch-size", "-2", "-o", str(tmp / "f.png")], "'--batch-size': -2"),
        (lambda cls, seg, tmp: ["profile", "--onnx", str(tmp), "--threads", "-1"], "'--threads': -1"),
        (lambda cls, seg, tmp: ["profile", "--backbone", "resnet8", "--res", "16", "--num-classes", "0"], "'--num-classes': 0"),
        (lambda cls, seg, tmp: ["deploy", str(cls), "--budget-madds", "1G", "--threads", "0", "-o", str(tmp / "d")], "'--threads': 0"),
        (lambda cls, seg, tmp: ["predict", str(_png(tmp / "a.png")), "--checkpoint", str(seg), "--res", "0", "-o", str(tmp / "p")], "--res 0: sizes must be positive"),
        (lambda cls, seg, tmp: ["predict", str(_png(tmp / "a.png")), "--checkpoint", str(seg), "--res", "-16", "-o", str(tmp / "p")], "--res -16: sizes must be positive"),
    ],
)
def test_counts_below_one_are_refused(tmp_path_factory, tmp_path, capsys, make_args, culprit):
    from deploy_fixtures import cls_run, seg_run

    runs = (cls_run(tmp_path_factory), seg_run(tmp_path_factory))
    before = [_files(run) for run in runs]
    code, err = _run(make_args(*runs, tmp_path), capsys)
    _one_line(code, err, culprit if culprit.startswith("--res") else f"Invalid value for {culprit} is not in the range x>=1")
    assert [_files(run) for run in runs] == before
    assert _files(tmp_path) <= {"a.png"}


def test_thread_counts_below_one_are_refused_by_the_api():
    from rsvision.analysis.latency import torch_threads
    from rsvision.errors import UserError

    for threads in (0, -1):
        with pytest.raises(UserError, match=rf"^threads: expected a positive number of threads, got {threads}$"):
            with torch_threads(threads):
                pass


@pytest.mark.parametrize(
    "make_args, culprit",
    [
        (lambda cls, seg, tmp: ["plot", str(cls), "-o", str(tmp / "file" / "f.png")], "-o {file}/f.png"),
        (lambda cls, seg, tmp: ["export", str(cls), "--format", "onnx", "-o", str(tmp / "file" / "o")], "-o {file}/o"),
        (lambda cls, seg, tmp: ["export", str(cls), "--format", "lq", "-o", str(tmp / "file" / "x.lq")], "-o {file}/x.lq"),
        (lambda cls, seg, tmp: ["deploy", str(cls), "--budget-madds", "1G", "-o", str(tmp / "file" / "d")], "-o {file}/d"),
        (lambda cls, seg, tmp: ["predict", str(_png(tmp / "a.png")), "--checkpoint", str(seg), "-o", str(tmp / "file" / "p")], "-o {file}/p"),
        (lambda cls, seg, tmp: ["convert", str(tmp / "a.pth"), "--from", "rs-nets", "-o", str(tmp / "file" / "run")], "-o {file}/run"),
        (lambda cls, seg, tmp: ["train", _recipe_file(tmp, tiny_recipe_dict(tmp)), "--quiet", "--set", f"output_dir={tmp / 'file' / 'runs'}"],
         "output_dir {file}/runs"),
    ],
)
def test_output_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path_factory, tmp_path, capsys, make_args, culprit):
    from deploy_fixtures import cls_run, seg_run

    runs = (cls_run(tmp_path_factory), seg_run(tmp_path_factory))
    (tmp_path / "file").write_text("not a folder")
    before = [_files(run) for run in runs]
    code, err = _run(make_args(*runs, tmp_path), capsys)
    file = tmp_path / "file"
    _one_line(code, err, f"{culprit.format(file=file)}: cannot write there ({file} is a file, not a folder)")
    assert [_files(run) for run in runs] == before
    assert _files(tmp_path) <= {"file", "a.png", "bad.yaml"} and file.read_text() == "not a folder"


@pytest.fixture
def read_only(tmp_path):
    """Make folders read-only (chmod, or the immutable flag where chmod does not bind, as for root); skip where neither works."""
    import os
    import shutil
    import subprocess

    locked = []

    def lock(folder: Path) -> Path:
        folder.chmod(0o555)
        locked.append(folder)
        if os.access(folder, os.W_OK):
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
                pytest.skip("cannot make a folder read-only here")
        return folder

    yield lock
    for folder in locked:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_read_only_folders_are_refused_before_any_work(tmp_path_factory, tmp_path, capsys, read_only):
    import shutil

    from deploy_fixtures import cls_run

    run = tmp_path / "run"
    shutil.copytree(cls_run(tmp_path_factory), run)
    before = _files(run)
    read_only(run)
    code, err = _run(["calibrate", str(run), "--res", "12", "--images", "8"], capsys)
    _one_line(code, err, f"{run}/calibration.safetensors: cannot write there ({run}: ")
    figures = tmp_path / "figures"
    figures.mkdir()
    read_only(figures)
    code, err = _run(["plot", str(cls_run(tmp_path_factory)), "-o", str(figures / "f.png")], capsys)
    _one_line(code, err, f"-o {figures}/f.png: cannot write there ({figures}: ")
    assert _files(run) == before and not any(figures.iterdir())


def test_eval_of_a_read_only_run_shows_its_results_and_says_they_are_not_kept(tmp_path_factory, tmp_path, capsys, read_only):
    import shutil

    from deploy_fixtures import cls_run

    run = tmp_path / "run"
    shutil.copytree(cls_run(tmp_path_factory), run)
    before = _files(run)
    read_only(run)
    try:
        main(["eval", "--checkpoint", str(run), "--res", "16"])
    except SystemExit as exc:
        assert exc.code == 0
    captured = capsys.readouterr()
    assert "top1" in captured.out and _files(run) == before
    assert f"warning: {run}/evaluations.json: not kept" in captured.err and "Traceback" not in captured.err


def test_predict_with_a_bad_image_writes_no_output_folder(tmp_path_factory, tmp_path, capsys):
    from deploy_fixtures import seg_run

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, err = _run(["predict", str(_png(tmp_path / "a.png")), str(bad), "--checkpoint", str(seg_run(tmp_path_factory)), "-o", str(tmp_path / "p")], capsys)
    _one_line(code, err, f"{bad}: cannot read image")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resolutions": []}, "resolutions: expected a list of one or more positive integer sizes, got []"),
        ({"resolutions": [64, 0]}, "resolutions: expected a list of one or more positive integer sizes, got [64, 0]"),
        ({"subnets": ["64w150"]}, "subnets: expected sizes (224) or sub-network ids (160w70), got ['64w150']"),
        ({"num_classes": 0}, "num_classes: expected a positive integer, got 0"),
        ({"in_channels": -1}, "in_channels: expected a positive integer, got -1"),
    ],
)
def test_create_model_names_a_bad_argument(kwargs, message):
    from rsvision import create_model
    from rsvision.errors import UserError

    with pytest.raises(UserError) as info:
        create_model(backbone="resnet8", backbone_args={"width": 4}, **kwargs)
    assert str(info.value) == message


def test_plot_refuses_runs_of_other_class_sets(tmp_path_factory, tmp_path, capsys):
    from deploy_fixtures import cls_run

    four, two = cls_run(tmp_path_factory), _two_class_run(tmp_path_factory)
    code, err = _run(["plot", str(four), str(two), "-o", str(tmp_path / "f.png")], capsys)
    _one_line(code, err, f"{two}: predicts 2 classes (disc_plus, disc_x), but {four} predicts 4 classes (disc_plus, disc_x, square_plus, ...)",
              "plot runs of one class set")
    assert not any(tmp_path.iterdir())


def test_plugin_whose_forward_crashes_in_width_conversion_is_exit_1(tmp_path, capsys, monkeypatch, clean_plugins):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user_crashing.py").write_text(
        "from torch import nn\n"
        "from rsvision import register_backbone\n\n"
        "class Crashing(nn.Module):\n"
        "    out_channels = [6]\n"
        "    output_stride = 1\n\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 6, 3, padding=1)\n\n"
        "    def forward(self, x):\n"
        "        raise ValueError('no GPU here')\n\n"
        "@register_backbone('user_crashing')\n"
        "def user_crashing():\n"
        "    return Crashing()\n"
    )
    data = tiny_recipe_dict(tmp_path, widths={"range": [0.25, 1.0]}, model={"backbone": "user_crashing", "num_classes": 4})
    code, err = _run(["train", _recipe_file(tmp_path, data), "--quiet", "--plugin", "user_crashing.py"], capsys)
    assert code == 1, err
    assert err.startswith("failed: RuntimeError: make_slimmable: the model's own forward fails"), err
    assert "at backbone (ValueError: no GPU here)" in err, err
    assert not (tmp_path / "runs").exists()


def test_warnings_print_as_one_plain_line(tmp_path_factory, tmp_path, capsys):
    import shutil

    from deploy_fixtures import cls_run

    run = tmp_path / "run"
    shutil.copytree(cls_run(tmp_path_factory), run)
    main(["eval", "--checkpoint", str(run), "--res", "32"])
    err = capsys.readouterr().err
    assert err == "warning: resolution 32 is outside the trained range 8..16; using the BN group of 16\n", err
