"""Training, checkpoints, resume and the CLI, end to end on tiny data."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import crash_then_resume, tiny_recipe_dict
from safetensors.torch import load_file

from rsvision.analysis.evaluate import evaluate_artifact
from rsvision.cli import main
from rsvision.engine import train
from rsvision.recipe import validate_recipe
from rsvision.run.folder import load_artifact


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    # lr 0.1: at 0.05 three epochs of three steps stay at chance, and whether the last loss
    # ends below the first is a coin toss of the crops drawn
    recipe = validate_recipe(tiny_recipe_dict(tmp, train={"epochs": 3, "lr": 0.1, "weight_decay": 0.0, "seed": 0}))
    return recipe, train(recipe, name="tiny", quiet=True)


def test_training_lowers_the_loss_and_writes_the_run_folder(trained):
    recipe, run_dir = trained
    log = _log(run_dir)
    assert [e["epoch"] for e in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"]
    assert {"model.safetensors", "rsvision.json", "state", "log.jsonl"} <= {p.name for p in run_dir.iterdir()}
    meta = json.loads((run_dir / "rsvision.json").read_text())
    assert meta["task"] == "cls" and meta["resolutions"] == [16, 12, 8]
    assert [r["subnet"] for r in meta["metrics"]] == ["16", "12", "8", "ensemble"]
    assert meta["complete"] and meta["epochs_done"] == 3 and meta["subnets"] == ["16", "12", "8"]
    assert sum(meta["ensemble_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert set(meta["madds"]) == {"16", "12", "8"}
    assert "mred.alpha" in load_file(str(run_dir / "model.safetensors"))


def test_checkpoint_round_trip_gives_identical_evaluation(trained):
    recipe, run_dir = trained
    artifact = load_artifact(run_dir)
    rows = evaluate_artifact(artifact)
    assert [{k: v for k, v in r.items() if k != "madds"} for r in rows] == artifact.meta["metrics"]
    x = torch.randn(2, 3, 14, 14)
    again = load_artifact(run_dir)
    with torch.no_grad():
        assert torch.equal(artifact.model(x), again.model(x))  # 14 is untrained: interpolated BN


def test_resume_after_a_crash_finishes_like_an_uninterrupted_run(tmp_path, monkeypatch):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 2, "lr": 0.05, "weight_decay": 0.0, "seed": 0}))
    full, resumed = crash_then_resume(recipe, monkeypatch)
    assert [e["epoch"] for e in _log(resumed)] == [1, 2]
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def _recipe_file(tmp_path, **overrides) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path, **overrides)))
    return str(path)


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_cli_eval_at_trained_and_interpolated_resolutions(trained, capsys):
    _, run_dir = trained
    main(["eval", "--checkpoint", str(run_dir), "--res", "12", "14", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert [r["resolution"] for r in report["results"]] == [12, 14]
    assert report["results"][1]["status"] == "interpolated"
    assert 0 <= report["results"][1]["top1"] <= 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.yaml"], "missing.yaml: recipe file not found"),
        (["train", "{recipe}", "--set", "train.lr=abc"], "train.lr: expected a number, got 'abc'"),
        (["train", "{recipe}", "--set", "model.backbone=resnet19"], "unknown backbone 'resnet19'; did you mean"),
        (["eval", "--task", "cls", "--checkpoint", "{tmp}/nothing"], "nothing: no such run folder or file"),
    ],
)
def test_cli_user_errors_print_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    recipe = _recipe_file(tmp_path)
    args = [a.format(recipe=recipe, tmp=tmp_path) for a in args]
    code, out, err = _run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2  # rich may wrap one line


def test_cli_eval_without_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run_cli(["eval", "--task", "cls", "--res", "96"], capsys)
    assert code == 2 and "no finished run of task 'cls' under runs/" in err


def test_corrupt_image_in_an_imagefolder_is_named(tmp_path, capsys, monkeypatch):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("L", (20, 20), color=40 * i).save(folder / f"{i}.png")  # grey → RGB
    bad = tmp_path / "data" / "train" / "b" / "broken.png"
    bad.write_bytes(b"not a png at all")
    monkeypatch.chdir(tmp_path)
    recipe = _recipe_file(
        tmp_path,
        data={"dataset": "imagefolder", "root": str(tmp_path / "data"), "batch_size": 3, "workers": 1},
        model={"backbone": "resnet8", "num_classes": 2, "backbone_args": {"width": 4}},
    )
    code, _, err = _run_cli(["train", recipe, "--quiet"], capsys)
    assert code == 2
    assert "broken.png: cannot read image" in err


@pytest.mark.parametrize("train_cfg", [{"mixed_precision": "bf16"}, {"grad_accum": 2, "schedule": "step", "milestones": [1]}])
def test_training_options(tmp_path, train_cfg):
    cfg = {"epochs": 1, "lr": 0.05, "seed": 0, "max_steps_per_epoch": 2, **train_cfg}
    run_dir = train(validate_recipe(tiny_recipe_dict(tmp_path, train=cfg)), name="opts", quiet=True)
    log = _log(run_dir)
    assert len(log) == 1 and all(r["top1"] >= 0 for r in log[0]["val"])


def test_bf16_runs_the_forward_in_bfloat16_on_cpu(tmp_path, monkeypatch):
    from rsvision.tasks.classification import ClassificationTask

    dtypes: list[torch.dtype] = []
    real_build = ClassificationTask.build_model

    def build_model(self):
        model = real_build(self)
        conv = model.body.backbone.layers[0][0].conv1
        conv.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype) if m.training else None)
        return model

    monkeypatch.setattr(ClassificationTask, "build_model", build_model)
    cfg = {"epochs": 1, "mixed_precision": "bf16", "max_steps_per_epoch": 2}
    train(validate_recipe(tiny_recipe_dict(tmp_path, train=cfg)), name="bf16", quiet=True)
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_cli_list_shows_every_kind(capsys):
    main(["list", "--json"])
    kinds = json.loads(capsys.readouterr().out)
    assert {"resnet18", "resnet50", "mobilenet_v2", "resnet8", "preact_resnet18"} <= set(kinds["backbones"])
    assert {"classifier", "refinenet", "unet", "fpn", "deeplabv3plus"} <= set(kinds["heads"])
    assert kinds["tasks"] == ["cls", "det", "seg"] and "lq" in kinds["quantizers"]
    assert {"synthetic", "imagefolder", "nyudv2", "segfolder", "synthetic_seg", "coco", "synthetic_det", "fashion_canvas"} <= set(kinds["datasets"])
    main(["list"])
    text = capsys.readouterr().out
    assert "backbones" in text and "resnet18" in text and "refinenet" in text


def test_cli_profile_reports_the_paper_costs(capsys):
    main(["profile", "--backbone", "resnet18", "--res", "224", "96", "--no-latency", "--json"])
    report = json.loads(capsys.readouterr().out)
    madds = [row["madds"] for row in report["rows"]]
    assert madds[0] / 1e9 == pytest.approx(1.82, abs=0.01) and madds[1] / 1e6 == pytest.approx(335, abs=1.5)
    assert report["parameters_plain"] == 11_689_512 and report["parameters_rsnet"] == 11_689_512 + 9_600
    main(["profile", "--backbone", "resnet18", "--res", "224", "96", "--no-latency"])
    text = capsys.readouterr().out
    assert "1.81G" in text and "334M" in text and "11,699,112" in text
