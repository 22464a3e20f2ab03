"""Training features beyond the papers, each off by default: label smoothing in L_cls, a
validation split of one image folder, keeping the best epoch, an EMA of the weights, mixup."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import crash_then_resume, tiny_recipe_dict

from rsvision.errors import UserError
from rsvision.recipe import validate_recipe
from rsvision.training.loss import MREDLoss


def test_label_smoothing_changes_l_cls_only():
    """C = 2, z = (ln 3, 0): p = (3/4, 1/4). With epsilon 0.2 the target is (0.9, 0.1), so
    L_cls = -(0.9 ln 3/4 + 0.1 ln 1/4) = 0.39755; L_ens keeps the hard label: -ln 3/4."""
    z = torch.tensor([[math.log(3.0), 0.0]])
    target = torch.tensor([0])
    out = MREDLoss(1, mode="off", label_smoothing=0.2)([z], target)
    assert out.cls.item() == pytest.approx(-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)), abs=1e-6)
    assert out.cls.item() == pytest.approx(0.39755, abs=1e-5)
    assert out.ens.item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_label_smoothing_leaves_l_ens_and_l_dis_as_the_paper():
    torch.manual_seed(0)
    logits = [torch.randn(4, 5) for _ in range(3)]
    target = torch.tensor([0, 1, 2, 3])
    plain = MREDLoss(3, mode="full")(logits, target)
    smoothed = MREDLoss(3, mode="full", label_smoothing=0.1)(logits, target)
    assert torch.equal(plain.ens, smoothed.ens) and torch.equal(plain.dis, smoothed.dis)
    assert not torch.isclose(plain.cls, smoothed.cls)


def test_the_recipes_label_smoothing_reaches_the_criterion(tmp_path):
    from rsvision.registry import TASKS
    from rsvision.training import method_for

    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"label_smoothing": 0.1}))
    task = TASKS.get(recipe.task)(recipe)
    method = method_for(recipe)(task.build_model(), task, recipe)
    assert method.criterion.label_smoothing == 0.1
    with pytest.raises(UserError, match="train.label_smoothing"):
        validate_recipe(tiny_recipe_dict(tmp_path, train={"label_smoothing": 1.0}))


def _one_folder(root, classes: int = 4, per_class: int = 5) -> None:
    """``root/<class>/*.png``: one folder of class folders, no train/ or val/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")


def _folder_recipe(tmp_path, **data):
    recipe = tiny_recipe_dict(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 1})
    recipe["data"] = {"dataset": "imagefolder", "root": str(tmp_path / "images"), "batch_size": 4, "workers": 0, **data}
    return validate_recipe(recipe)


def test_val_split_holds_out_a_seeded_part_of_one_folder(tmp_path, one_thread):
    from rsvision.engine import train
    from rsvision.registry import TASKS

    _one_folder(tmp_path / "images")
    recipe = _folder_recipe(tmp_path, val_split=0.25)
    task = TASKS.get("cls")(recipe)
    train_part, val_part = task.dataset("train"), task.dataset("val")
    assert (len(train_part), len(val_part)) == (15, 5)
    assert set(train_part.indices).isdisjoint(val_part.indices) and set(train_part.indices) | set(val_part.indices) == set(range(20))
    assert val_part.classes == ["c0", "c1", "c2", "c3"]
    again = TASKS.get("cls")(_folder_recipe(tmp_path, val_split=0.25)).dataset("val")
    assert again.indices == val_part.indices  # the same part for every command that rebuilds the run's data
    run = train(recipe, name="split", quiet=True)
    meta = json.loads((run / "rsvision.json").read_text())
    assert meta["class_names"] == ["c0", "c1", "c2", "c3"] and meta["metrics"]


def test_one_folder_without_val_split_says_how_to_split(tmp_path):
    from rsvision.registry import TASKS

    _one_folder(tmp_path / "images")
    with pytest.raises(UserError, match="set data.val_split"):
        TASKS.get("cls")(_folder_recipe(tmp_path)).dataset("val")


def test_a_val_split_too_small_for_the_data_is_one_line(tmp_path):
    from rsvision.registry import TASKS

    _one_folder(tmp_path / "images", classes=2, per_class=2)
    with pytest.raises(UserError, match="data.val_split: 0.1 of 4 samples leaves 0 for validation"):
        TASKS.get("cls")(_folder_recipe(tmp_path, val_split=0.1)).dataset("val")


def test_keep_best_ranks_by_a_metric_of_the_subnetworks_or_one_row(tmp_path):
    from rsvision.engine.trainer import best_value

    rows = [{"subnet": "16", "resolution": 16, "top1": 50.0}, {"subnet": "8", "resolution": 8, "top1": 30.0}, {"subnet": "ensemble", "top1": 60.0}]
    assert best_value(rows, "top1", {"16", "8"}, "r.yaml") == 40.0  # the mean over the trained sub-networks
    assert best_value(rows, "top1/ensemble", {"16", "8"}, "r.yaml") == 60.0
    with pytest.raises(UserError, match=r"r.yaml: train.keep_best: 'top9' names no evaluated value \(metrics: top1;"):
        best_value(rows, "top9", {"16", "8"}, "r.yaml")


def test_keep_best_keeps_a_run_folder_of_the_best_epoch(tmp_path, one_thread):
    from rsvision.analysis.evaluate import evaluate_artifact
    from rsvision.engine import train
    from rsvision.run.folder import load_artifact

    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 3, "max_steps_per_epoch": 2, "keep_best": "top1/12"}))
    run = train(recipe, name="best", quiet=True)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    scores = [next(r["top1"] for r in e["val"] if r["subnet"] == "12") for e in log]
    best_epoch = scores.index(max(scores)) + 1
    meta = json.loads((run / "best" / "rsvision.json").read_text())
    assert meta["best"] == {"by": "top1/12", "epoch": best_epoch, "value": max(scores)}
    assert meta["complete"] and meta["epochs_done"] == best_epoch and meta["metrics"] == log[best_epoch - 1]["val"]
    rows = evaluate_artifact(load_artifact(run / "best"))
    assert next(r["top1"] for r in rows if r["subnet"] == "12") == max(scores)  # the weights of that epoch


def test_ema_of_the_weights_and_bn_statistics_is_evaluated_per_subnetwork_and_saved(tmp_path, one_thread):
    from safetensors.torch import load_file

    from rsvision.analysis.evaluate import evaluate_artifact
    from rsvision.engine import train
    from rsvision.run.folder import load_artifact

    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 2, "max_steps_per_epoch": 3, "ema": 0.5}))
    run = train(recipe, name="ema", quiet=True)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all([r["subnet"] for r in e["val_ema"]] == ["16", "12", "8", "ensemble"] for e in log)
    meta = json.loads((run / "ema" / "rsvision.json").read_text())
    assert meta["ema"] == {"decay": 0.5} and meta["metrics"] == log[-1]["val_ema"]
    trained, averaged = load_file(str(run / "model.safetensors")), load_file(str(run / "ema" / "model.safetensors"))
    assert trained.keys() == averaged.keys()
    bn_means = [k for k in trained if k.endswith("running_mean")]
    assert bn_means and all(not torch.equal(trained[k], averaged[k]) for k in bn_means)  # BN statistics averaged too
    rows = evaluate_artifact(load_artifact(run / "ema"))
    assert [{k: v for k, v in r.items() if k != "madds"} for r in rows] == [{k: v for k, v in r.items() if k != "madds"} for r in meta["metrics"]]


def test_ema_after_one_step_is_the_trained_network_and_then_the_decayed_mean():
    """torch's AveragedModel with an EMA: the first update copies, then a <- d a + (1 - d) w."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    net = torch.nn.BatchNorm1d(1)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.75), use_buffers=True)
    with torch.no_grad():
        net.weight.fill_(2.0), net.running_mean.fill_(4.0)
        ema.update_parameters(net)
        net.weight.fill_(6.0), net.running_mean.fill_(8.0)
        ema.update_parameters(net)
    assert ema.module.weight.item() == 0.75 * 2.0 + 0.25 * 6.0 == 3.0
    assert ema.module.running_mean.item() == 0.75 * 4.0 + 0.25 * 8.0 == 5.0


def test_a_resumed_run_continues_its_ema(tmp_path, monkeypatch, one_thread):
    from safetensors.torch import load_file

    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 2, "max_steps_per_epoch": 2, "ema": 0.5}))
    full, resumed = crash_then_resume(recipe, monkeypatch)
    a, b = (load_file(str(run / "ema" / "model.safetensors")) for run in (full, resumed))
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_mixup_mixes_the_full_resolution_batch_once_and_its_labels(tmp_path):
    """Mixup alone (prob 1): image 0 becomes lam * x_0 + (1 - lam) * x_1 (timm pairs a batch with
    its flip), its target lam at class y_0 and 1 - lam at y_1, with lam the same for both."""
    from rsvision.data.transforms import batch_resolutions
    from rsvision.registry import TASKS
    from rsvision.training.mixup import MIXED_TARGET, BatchMix

    recipe = validate_recipe(tiny_recipe_dict(tmp_path, train={"mixup": {"mixup_alpha": 1.0, "cutmix_alpha": 0.0}}))
    task = TASKS.get("cls")(recipe)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    batch = {"image": images, "target": torch.tensor([1, 3])}
    np.random.seed(0)
    mixed = BatchMix(recipe, 4, task.input_format)(batch)
    lam = mixed[MIXED_TARGET][0, 1].item()
    assert 0 < lam < 1
    assert torch.allclose(mixed[MIXED_TARGET], torch.tensor([[0, lam, 0, 1 - lam], [0, 1 - lam, 0, lam]]))
    x = batch_resolutions(batch, [16], task.input_format)[0]
    torch.testing.assert_close(mixed["image"][0], lam * x[0] + (1 - lam) * x[1])
    assert torch.equal(mixed["target"], batch["target"]) and torch.equal(batch["image"], images)  # labels kept, input untouched
    inputs = batch_resolutions(mixed, [16, 12, 8], task.input_format)  # then resized, one mix for all resolutions
    assert [tuple(t.shape[-2:]) for t in inputs] == [(16, 16), (12, 12), (8, 8)] and torch.equal(inputs[0], mixed["image"])


def test_mred_with_one_hot_soft_targets_equals_hard_labels():
    torch.manual_seed(0)
    logits = [torch.randn(4, 5) for _ in range(2)]
    target = torch.tensor([0, 1, 2, 3])
    hard = MREDLoss(2, mode="full", label_smoothing=0.1)(logits, target)
    soft = MREDLoss(2, mode="full", label_smoothing=0.1)(logits, torch.nn.functional.one_hot(target, 5).float())
    for a, b in ((hard.cls, soft.cls), (hard.ens, soft.ens), (hard.dis, soft.dis)):
        torch.testing.assert_close(a, b)


def test_a_mixup_run_trains_and_wrong_settings_are_one_line(tmp_path, one_thread):
    from rsvision.engine import train

    run = train(validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 2, "mixup": {}})), name="mix", quiet=True)
    log = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert math.isfinite(log["loss"])
    odd = tiny_recipe_dict(tmp_path, train={"epochs": 1, "mixup": {}})
    odd["data"]["batch_size"] = 7
    with pytest.raises(UserError, match="train.mixup: .* data.batch_size must be even, not 7"):
        train(validate_recipe(odd), name="odd", quiet=True)
    with pytest.raises(UserError, match="nothing to mix"):
        validate_recipe(tiny_recipe_dict(tmp_path, train={"mixup": {"mixup_alpha": 0, "cutmix_alpha": 0}}))
