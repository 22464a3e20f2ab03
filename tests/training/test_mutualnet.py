"""MutualNet training (widths x resolutions): sandwich draws, in-place distillation, the
low-memory step, post-hoc BN statistics, the recipe's errors, ``eval --width`` and ``query``."""

import copy
import json
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_recipe_dict
from rsvision.tasks.base import Task
from rsvision.tasks.classification import ClassificationMetrics
from torch.utils.data import Dataset

from rsvision import cli as rscli
from rsvision.analysis.query import width_grid
from rsvision.deploy.budget import parse_madds
from rsvision.engine import evaluate, train
from rsvision.errors import UserError
from rsvision.models import build_model
from rsvision.nn.bn_stats import calibrate
from rsvision.nn.slimmable import channels_at, slimmable_layers
from rsvision.nn.switchable import at_subnet
from rsvision.recipe import WidthsConfig, check_unused, validate_recipe
from rsvision.registry import TASKS, register_task
from rsvision.run.folder import load_artifact
from rsvision.subnet import SubNet
from rsvision.training import MutualTraining, StepContext, method_for
from rsvision.training.loss import kl_divergence
from rsvision.training.mutual import TrainingView, sandwich

CTX = StepContext(lambda loss: loss.backward(), nullcontext)
WIDTHS = {"range": [0.25, 1.0], "divisor": 4}


def _method(tmp_path, widths=WIDTHS, **overrides) -> MutualTraining:
    model = {"backbone": "resnet8", "num_classes": 4, "backbone_args": {"width": 16}}
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, widths=widths, model=model, **overrides))
    torch.manual_seed(0)
    method = method_for(recipe)(build_model(recipe), TASKS.get("cls")(recipe), recipe)
    assert isinstance(method, MutualTraining)
    return method.train()


def _batch(resolutions, n=6, classes=4):
    g = torch.Generator().manual_seed(0)
    return {"images": [torch.randn(n, 3, r, r, generator=g) for r in resolutions], "target": torch.randint(classes, (n,), generator=g)}


# ---------------------------------------------------------------- sandwich rule


def test_sandwich_draws_depend_on_seed_and_counter_only(tmp_path):
    widths = validate_recipe(tiny_recipe_dict(tmp_path, widths={"range": [0.25, 1.0], "sample": 5})).widths
    res = [16, 12, 8]
    first = [sandwich(widths, res, seed=3, draw=k) for k in range(20)]
    again = [sandwich(widths, res, seed=3, draw=k) for k in range(20)]  # another process, same step
    assert first == again
    assert first != [sandwich(widths, res, seed=4, draw=k) for k in range(20)]
    for draw in first:
        assert len(draw) == 5
        assert draw[0] == SubNet(16, 1.0) and draw[1].width == 0.25  # full @ largest, then the smallest
        assert all(0.25 <= s.width <= 1.0 and s.resolution in res for s in draw[1:])
    assert len({s.resolution for d in first for s in d[1:]}) == 3  # students see every resolution
    listed = validate_recipe(tiny_recipe_dict(tmp_path, widths={"list": [1.0, 0.75, 0.5, 0.35]})).widths
    assert {s.width for k in range(20) for s in sandwich(listed, res, 0, k)[2:]} == {0.75, 0.5}


def test_draw_counter_lives_in_the_method_state_so_resume_continues(tmp_path):
    method = _method(tmp_path)
    batch = _batch([16, 12, 8])
    for _ in range(2):
        method.step(batch, CTX)
    state = copy.deepcopy(method.state_dict())
    assert int(state["draws"]) == 2
    resumed = _method(tmp_path)
    resumed.load_state_dict(state)
    assert resumed.next_draw() == method.next_draw() == (2, sandwich(method.widths, [16, 12, 8], 0, 2))


# ---------------------------------------------------------------- in-place distillation


def test_distillation_gives_no_gradient_to_the_teacher_logits():
    teacher = torch.randn(4, 5, requires_grad=True)
    student = torch.randn(4, 5, requires_grad=True)
    kl = kl_divergence(teacher, student)
    assert torch.autograd.grad(kl, teacher, allow_unused=True)[0] is None
    assert torch.autograd.grad(kl_divergence(teacher, student), student)[0].abs().sum() > 0


def test_in_place_distillation_gradients_reach_the_student_only(tmp_path):
    method = _method(tmp_path, widths={**WIDTHS, "sample": 2})  # full + the smallest width
    batch = _batch([16, 12, 8])
    full = copy.deepcopy(method)
    draw = sandwich(method.widths, [16, 12, 8], 0, 0)
    method.step(batch, CTX)
    with at_subnet(full.model, draw[0]):  # the full network's CE alone
        F.cross_entropy(full.model(batch["images"][0]), batch["target"]).backward()
    student = draw[1]
    assert student.width == 0.25
    for layer, alone in zip(slimmable_layers(method.model), slimmable_layers(full.model)):
        kd = layer.weight.grad - alone.weight.grad  # what the KL term added
        assert kd.abs().sum() > 0, "the student's own channels learn"
        c_out = layer.active_outputs(0.25, kd.shape[0])
        assert not kd[c_out:].any(), "output channels the student does not use get nothing from its KL"
        c_in = kd.shape[1] if kd.shape[1] == 3 else channels_at(0.25, kd.shape[1], 4)
        assert not kd[:, c_in:].any(), "nor do its unused input channels"


@pytest.mark.parametrize("teacher", ["largest", "ensemble"])
def test_low_memory_step_matches_the_standard_step(tmp_path, teacher):
    method = _method(tmp_path, widths={**WIDTHS, "teacher": teacher})
    batch = _batch([16, 12, 8])

    def run(low):
        m = copy.deepcopy(method)
        m.multi_backward = low
        out = m.step(batch, CTX)
        return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, {n: b.clone() for n, b in m.named_buffers()}

    out_std, g_std, b_std = run(False)
    out_low, g_low, b_low = run(True)
    assert g_std.keys() == g_low.keys() and (teacher == "largest") != ("criterion.alpha" in g_low)
    for name in g_std:
        torch.testing.assert_close(g_low[name], g_std[name], rtol=1e-5, atol=1e-6, msg=name)
    for name in b_std:
        torch.testing.assert_close(b_low[name], b_std[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(out_low.loss, out_std.loss.detach(), rtol=1e-5, atol=1e-6)
    assert out_low.log.keys() == out_std.log.keys()


# ---------------------------------------------------------------- the students' loss and its weight


def _expected_loss(method: MutualTraining, batch, weight: float) -> torch.Tensor:
    """Eq. 4 by hand on a copy of ``method`` for its next draw: CE of the full width, plus
    ``weight`` times the students' KL to its detached prediction (or their CE on labels)."""
    m = copy.deepcopy(method)
    draw = sandwich(m.widths, m.resolutions, 0, int(m.draws))
    res = sorted(m.resolutions, reverse=True)
    with at_subnet(m.model, draw[0]):
        z_full = m.model(batch["images"][0])
    terms = []
    for subnet in draw[1:]:
        with at_subnet(m.model, subnet):
            z = m.model(batch["images"][res.index(subnet.resolution)])
        terms.append(kl_divergence(z_full.detach(), z) if m.widths.students == "distill" else F.cross_entropy(z, batch["target"]))
    return F.cross_entropy(z_full, batch["target"]) + weight * torch.stack(terms).sum()


def test_the_papers_setting_reproduces_eq_4_exactly(tmp_path):
    batch = _batch([16, 12, 8])
    default = _method(tmp_path)
    explicit = _method(tmp_path, widths={**WIDTHS, "students": "distill", "student_ramp_epochs": 0})
    expected = _expected_loss(default, batch, 1.0)
    for method in (default, explicit):
        out = method(batch)
        assert torch.equal(out.loss, expected)
        assert out.log["students/weight"] == 1.0
    assert default.describe()["widths"] | {"draws": 0} == explicit.describe()["widths"] | {"draws": 0}


def test_students_on_labels_learn_from_cross_entropy(tmp_path):
    method = _method(tmp_path, widths={**WIDTHS, "students": "labels"})
    batch = _batch([16, 12, 8])
    expected = _expected_loss(method, batch, 1.0)
    out = method(batch)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)
    assert method.describe()["widths"]["students"] == "labels"


def test_student_weight_ramps_over_epochs_of_steps(tmp_path):
    # 48 training images in batches of 8: 6 steps per epoch; a 2-epoch ramp lasts 12 steps.
    method = _method(tmp_path, widths={**WIDTHS, "student_ramp_epochs": 2})
    assert method.steps_per_epoch == 6
    assert [method.student_weight(k) for k in (0, 3, 6, 9, 12, 50)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    capped = _method(tmp_path, widths={**WIDTHS, "student_ramp_epochs": 0.5}, train={"max_steps_per_epoch": 4})
    assert capped.steps_per_epoch == 4 and [capped.student_weight(k) for k in (0, 1, 2, 3)] == [0.0, 0.5, 1.0, 1.0]
    assert _method(tmp_path).student_weight(0) == 1.0


def test_the_ramps_weight_follows_the_draw_counter_so_resume_weighs_alike(tmp_path):
    method = _method(tmp_path, widths={**WIDTHS, "student_ramp_epochs": 2})
    batch = _batch([16, 12, 8])
    first = method(batch)
    assert first.log["students/weight"] == 0.0 and first.loss == first.log["ce"]
    state = copy.deepcopy(method.state_dict())
    state["draws"].fill_(6)  # a run resumed after six steps
    resumed = _method(tmp_path, widths={**WIDTHS, "student_ramp_epochs": 2})
    resumed.load_state_dict(state)
    expected = _expected_loss(resumed, batch, 0.5)
    out = resumed(batch)
    assert out.log["students/weight"] == 0.5
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "widths,extra,culprit",
    [
        ({"range": [1.0, 0.25]}, {}, "widths.range: expected 0 < low < high <= 1"),
        ({"range": [0.25, 1.0], "list": [1.0, 0.5]}, {}, "widths: give exactly one of range"),
        ({"range": [0.25, 1.0], "bn": "private"}, {}, "widths: bn: private keeps a BN per width"),
        ({"list": [1.0, 0.5], "sample": 1}, {}, "widths.sample:"),
        ({"list": [1.0, 0.333]}, {}, "widths.list: expected widths on a 0.01 grid"),
        ({"range": [0.25, 1.0], "teacher": "best"}, {}, "widths.teacher:"),
        ({"range": [0.25, 1.0], "depth": 2}, {}, "widths.depth: unknown key"),
        ({"range": [0.25, 1.0], "students": "teacher"}, {}, "widths.students:"),
        ({"range": [0.25, 1.0], "student_ramp_epochs": -1}, {}, "widths.student_ramp_epochs:"),
        ({"range": [0.25, 1.0], "calibration_view": "test"}, {}, "widths.calibration_view:"),
        ({"list": [1.0, 0.5], "bn": "private", "calibration_view": "train"}, {}, "widths: calibration_view: only read with bn: posthoc"),
        ({"range": [0.25, 1.0]}, {"model": {"backbone": "resnet8", "num_classes": 4, "shared_bn": True}}, "model.shared_bn: a width recipe"),
        ({"range": [0.25, 1.0]}, {"quant": {"method": "lq"}}, "quant: quantized width-switchable"),
        ({"list": [1.0, 0.5], "bn": "private"}, {"train": {"sync_bn": True}}, "train.sync_bn: not supported with widths"),
    ],
)
def test_recipe_errors_name_the_field(tmp_path, widths, extra, culprit):
    with pytest.raises(UserError) as err:
        validate_recipe(tiny_recipe_dict(tmp_path, widths=widths, **extra), "w.yaml")
    assert str(err.value).startswith(f"w.yaml: {culprit}") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "widths,extra,culprit",
    [
        ({"range": [0.25, 1.0]}, {"mred": {"mode": "full"}}, "mred.mode: only read when widths.teacher is 'ensemble'"),
        ({"list": [1.0, 0.5], "bn": "private", "calibration_images": 10}, {}, "widths.calibration_images: only read when widths.bn is 'posthoc'"),
    ],
)
def test_fields_a_width_recipe_does_not_read_are_refused(tmp_path, widths, extra, culprit):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, widths=widths, **extra), "w.yaml")
    with pytest.raises(UserError, match=f"^w.yaml: {culprit}"):
        check_unused(recipe, set(TASKS.get("cls").recipe_fields) | set(method_for(recipe).recipe_fields))
    ensemble = validate_recipe(tiny_recipe_dict(tmp_path, widths={"range": [0.25, 1.0], "teacher": "ensemble"}, mred={"mode": "full"}))
    check_unused(ensemble, set(TASKS.get("cls").recipe_fields) | set(method_for(ensemble).recipe_fields))


def test_private_bn_keeps_a_group_per_width_and_resolution(tmp_path):
    method = _method(tmp_path, widths={"list": [1.0, 0.5], "bn": "private", "divisor": 4})
    bn = next(m for m in method.model.modules() if type(m).__name__ == "SwitchableBatchNorm")
    assert list(bn.groups) == ["16w100", "12w100", "8w100", "16w50", "12w50", "8w50"]
    assert method.uncalibrated(method.eval_subnets()) == []


def test_only_private_bn_leaves_parameters_unused(tmp_path):
    """A step trains the drawn sub-networks' BN groups only (DDP must look for the others);
    shared BN and the slimmed weights are all reached through the full width."""
    assert _method(tmp_path, widths={"list": [1.0, 0.5], "bn": "private", "divisor": 4}).leaves_unused_parameters
    assert not _method(tmp_path).leaves_unused_parameters
    recipe = validate_recipe(tiny_recipe_dict(tmp_path))
    assert not method_for(recipe)(build_model(recipe), TASKS.get("cls")(recipe), recipe).leaves_unused_parameters


def test_query_grid_and_budgets():
    assert width_grid(WidthsConfig(range=[0.25, 1.0])) == [round(1 - 0.05 * k, 2) for k in range(16)]
    assert width_grid(WidthsConfig(range=[0.33, 0.9]))[-3:] == [0.4, 0.35, 0.33]
    assert width_grid(WidthsConfig(list=[0.5, 1.0])) == [1.0, 0.5]
    assert (parse_madds("150M"), parse_madds("1.2G"), parse_madds("3000")) == (150e6, 1.2e9, 3000)


# ---------------------------------------------------------------- a trained tiny run

CLASSES = 3


class _Offsets(Dataset):
    """Image i: seeded noise with +1 on channel (i mod 3), its class; every resolution resized from 24 px."""

    def __init__(self, size: int, resolutions, offset: int) -> None:
        self.size, self.resolutions, self.offset = size, list(resolutions), offset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.offset + i)
        image = torch.randn(3, 24, 24, generator=g)
        image[i % CLASSES] += 1.0
        images = [F.interpolate(image[None], size=(r, r), mode="bilinear", antialias=True)[0] for r in self.resolutions]
        return {"images": images, "target": i % CLASSES}


class _OffsetsTask(Task):
    primary_metric = "top1"

    def train_dataset(self) -> Dataset:
        return _Offsets(64, self.resolutions, 0)

    def eval_dataset(self, resolutions, split="val") -> Dataset:
        return _Offsets(60 if split == "val" else 64, resolutions, 10_000 if split == "val" else 0)

    def metrics(self):
        return ClassificationMetrics(CLASSES)

    def class_names(self):
        return [str(c) for c in range(CLASSES)]


@pytest.fixture(scope="module", autouse=True)
def offsets_task():
    """The task of this module's runs, registered for the module only."""
    saved = dict(TASKS._entries)
    register_task("width_offsets", override=True)(_OffsetsTask)
    yield
    TASKS._entries = saved


def _offsets_recipe(tmp_path, **train) -> dict:
    return {
        "task": "width_offsets",
        "resolutions": [16, 12],
        "model": {"backbone": "resnet8", "num_classes": CLASSES, "backbone_args": {"width": 8}},
        "data": {"dataset": "synthetic", "batch_size": 16, "workers": 0},
        "train": {"epochs": 4, "lr": 0.1, "weight_decay": 0.0, "seed": 0, "channels_last": False, "val_every": 2, **train},
        "widths": {"range": [0.25, 1.0], "divisor": 2, "calibration_images": 48},
        "output_dir": str(tmp_path / "runs"),
    }


@pytest.fixture(scope="module")
def width_run(tmp_path_factory):
    return train(validate_recipe(_offsets_recipe(tmp_path_factory.mktemp("width"))), name="offsets", quiet=True)


def test_validation_calibrates_then_forgets(width_run):
    log = [json.loads(line) for line in (width_run / "log.jsonl").read_text().splitlines()]
    rows = log[-1]["val"]
    assert [r["subnet"] for r in rows] == ["16w100", "12w100", "16w25", "12w25"]
    assert all(r["status"] == "calibrated" for r in rows)
    meta = json.loads((width_run / "rsvision.json").read_text())
    assert meta["widths"]["range"] == [0.25, 1.0] and meta["widths"]["draws"] == 4 * 4
    assert "make_divisible(w*C, 2)" in meta["widths"]["channels"] and "stay full" in meta["widths"]["channels"]
    assert meta["widths"]["full_outputs"] == ["body.head.fc"] and meta["widths"]["dropout"] == {}
    assert (meta["widths"]["calibration_view"], meta["widths"]["students"], meta["widths"]["student_ramp_epochs"]) == ("eval", "distill", 0.0)
    assert meta["madds"]["16w25"] < meta["madds"]["16w100"]
    assert not (width_run / "calibration.safetensors").exists()
    assert not any(".calibrated." in k for k in load_artifact(width_run).model.state_dict())


def test_recomputed_statistics_restore_what_shared_statistics_lose(width_run):
    artifact = load_artifact(width_run)
    narrow = [SubNet(16, 0.25), SubNet(12, 0.25)]
    shared = evaluate(artifact.model, artifact.task, narrow)
    assert [r["status"] for r in shared] == ["shared", "shared"]
    calibrate(artifact.model, artifact.task, narrow, images=64)
    recomputed = evaluate(artifact.model, artifact.task, narrow)
    assert [r["status"] for r in recomputed] == ["calibrated", "calibrated"]
    for before, after in zip(shared, recomputed):
        assert after["top1"] >= before["top1"] + 20, (before, after)


def test_statistics_from_the_training_view(width_run, tmp_path):
    """``calibration_view: train``: one seeded training crop per image, resized to every resolution."""
    task = TASKS.get("cls")(validate_recipe(tiny_recipe_dict(tmp_path)))
    data = TrainingView(task).eval_dataset([12, 16], split="train")
    first, again = data[5], data[5]
    assert [x.shape[-1] for x in first["images"]] == [16, 12]
    assert all(torch.equal(a, b) for a, b in zip(first["images"], again["images"]))  # seeded
    assert not torch.equal(first["images"][0], task.eval_dataset([16], split="train")[5]["images"][0])  # a random crop, not the centre
    artifact = load_artifact(width_run)
    view = TrainingView(artifact.task)
    narrow = [SubNet(16, 0.25), SubNet(12, 0.25)]
    shared = evaluate(artifact.model, artifact.task, narrow)
    calibrate(artifact.model, view, narrow, images=64)
    recomputed = evaluate(artifact.model, artifact.task, narrow)
    assert [r["status"] for r in recomputed] == ["calibrated", "calibrated"]
    for before, after in zip(shared, recomputed):
        assert after["top1"] >= before["top1"] + 20, (before, after)


def test_the_mobilenet_v2_recipe_records_its_fidelity_choices(tmp_path):
    recipe = validate_recipe(yaml.safe_load(open("recipes/mutualnet_mobilenetv2_imagenet.yaml")))
    recipe.model.num_classes = 10
    method = method_for(recipe)(build_model(recipe), TASKS.get("cls")(recipe), recipe)
    info = method.describe()["widths"]
    assert info["full_outputs"] == ["body.backbone.stages.3.18.0", "body.head.fc"]  # 1280 channels at every width
    assert info["dropout"] == {} and info["calibration_view"] == "train" and "make_divisible(w*C, 8)" in info["channels"]
    with at_subnet(method.model.eval(), SubNet(128, 0.7)):
        assert method.model(torch.zeros(1, 3, 128, 128)).shape == (1, 10)


def _cli(capsys, *args):
    """(exit status, stdout, stderr) of ``rsvision ARGS`` run in this process."""
    try:
        rscli.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_width_calibrates_and_says_so(width_run, capsys, monkeypatch):
    code, out, err = _cli(capsys, "eval", "--checkpoint", str(width_run), "--width", "0.5", "--res", "12", "--json")
    assert code == 0, err
    rows = json.loads(out)["results"]
    assert [(r["subnet"], r["status"]) for r in rows] == [("12w50", "calibrated")]
    assert "post-hoc BN: recomputed the statistics of 12w50" in err
    assert (width_run / "calibration.safetensors").exists()
    code, out, err = _cli(capsys, "eval", "--checkpoint", str(width_run), "--width", "0.5", "--res", "12", "--json")
    assert "recomputed" not in err  # stored in the run's calibration file


@pytest.mark.parametrize(
    "args,culprit",
    [
        (["eval", "--width", "0.1"], "--width 0.1: outside this run's width range 0.25..1"),
        (["eval", "--width", "0.333"], "--width 0.333: widths go in steps of 0.01"),
        (["query", "--budget", "12Q"], "--budget 12Q: expected a number of multiply-adds"),
        (["query", "--budget-ms", "-1"], "--budget-ms -1: expected a positive number of milliseconds"),
    ],
)
def test_bad_width_inputs_get_one_line(width_run, capsys, args, culprit):
    where = ["--checkpoint", str(width_run)] if args[0] == "eval" else [str(width_run)]
    code, _, err = _cli(capsys, args[0], *where, *args[1:])
    assert code == 2 and err.strip().startswith(f"error: {culprit}") and len(err.strip().splitlines()) == 1, err


def test_query_table_is_built_once_then_read_from_the_run(width_run, capsys, monkeypatch):
    grid = ["--step", "0.25", "--images", "48"]  # widths 0.25, 0.5, 0.75, 1 (the paper's step is 0.05)
    code, out, err = _cli(capsys, "query", str(width_run), *grid, "--budget", "150K", "--budget-ms", "50", "--json")
    assert code == 0, err
    report = json.loads(out)
    rows = report["rows"]
    assert sorted({r["width"] for r in rows}) == [0.25, 0.5, 0.75, 1.0] and {r["resolution"] for r in rows} == {16, 12}
    assert all(r["status"] == "calibrated" and r["latency_ms"] > 0 for r in rows)
    best = report["best"][0]
    assert best["kind"] == "madds" and best["choice"]["madds"] <= 150_000
    assert best["choice"]["top1"] == max(r["top1"] for r in rows if r["madds"] <= 150_000)
    assert (width_run / "query.json").exists() and not report["cached"]

    def no_more_work(*args, **kwargs):
        raise AssertionError("a cached query must not recalibrate")

    monkeypatch.setattr("rsvision.analysis.query.calibrate_missing", no_more_work)
    code, out, err = _cli(capsys, "query", str(width_run), *grid, "--budget", "150K")
    assert code == 0, err
    assert "query table" in out and "budget 150K MAdds: 0." in out
    code, out, err = _cli(capsys, "query", str(width_run), *grid, "--budget", "1K")
    assert code == 2 and err.strip().startswith("error: --budget: no configuration fits 1.00K MAdds (the cheapest, 0.25x @ 12x12, needs ")
    assert len(err.strip().splitlines()) == 1


def test_bf16_with_accumulation_and_low_memory_trains(tmp_path):
    recipe = _offsets_recipe(tmp_path, epochs=1, mixed_precision="bf16", grad_accum=2, memory="low")
    recipe["widths"] |= {"teacher": "ensemble", "sample": 3}
    run = train(validate_recipe(recipe), name="bf16", quiet=True)
    log = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(log["loss"])) and log["students"] > 0 and "ens" in log
    assert [r["subnet"] for r in log["val"]][-1] == "ensemble"
