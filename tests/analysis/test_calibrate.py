"""BN calibration: the statistics it stores, what it changes in a run folder, the CLI's errors."""

from __future__ import annotations

import json

import pytest
import torch
from calib_fixtures import copy_run, run_cli, shared_run
from safetensors.torch import load_file, save_file

from rsvision.analysis.calibrate import calibrate_run
from rsvision.data.sampling import mix_seed
from rsvision.io import file_sha256
from rsvision.nn.bn_stats import calibrate
from rsvision.nn.switchable import BN_TYPES, materialize, subnet_status, switchable_bns
from rsvision.run.files import CALIBRATION, WEIGHTS
from rsvision.run.folder import load_artifact
from rsvision.subnet import SubNet

pytestmark = pytest.mark.filterwarnings("ignore:resolution .* is outside the trained range")


@pytest.fixture(scope="module")
def rs_run(tmp_path_factory, one_thread):
    return shared_run(tmp_path_factory, [32, 8])


def _eval(run, res: list[str], capsys) -> dict[int, dict]:
    code, out, err = run_cli(["eval", "--checkpoint", str(run), "--res", *res, "--json"], capsys)
    assert code == 0, err
    return {row["resolution"]: row for row in json.loads(out)["results"]}


@torch.no_grad()
def _mean_batch_statistics(model, task, subnet: SubNet, resolutions: list[int], images: int, batch_size: int) -> dict[str, tuple]:
    """Per BN path: the mean over batches of each batch's channel means and unbiased variances, measured
    with hooks on the inputs of a plain copy of ``model`` as ``subnet`` whose BNs use batch statistics."""
    plain = materialize(model, subnet).eval()
    bns = {name: m for name, m in plain.named_modules() if isinstance(m, BN_TYPES)}
    for bn in bns.values():
        bn.train()
    seen: dict[str, list] = {name: [] for name in bns}

    def record(name):
        def hook(module, args):
            x = args[0].transpose(0, 1).flatten(1)  # channels x (N * H * W)
            seen[name].append((x.mean(1), x.var(1, unbiased=True)))
        return hook

    for name, bn in bns.items():
        bn.register_forward_pre_hook(record(name))
    data = task.eval_dataset(resolutions, split="train")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(mix_seed(task.recipe.train.seed, len(data))))
    chosen = order[:images].tolist()
    for start in range(0, len(chosen), batch_size):
        batch = task.eval_collate([data[i] for i in chosen[start : start + batch_size]])
        plain(batch["images"][resolutions.index(subnet.resolution)])
    return {name: (torch.stack([m for m, _ in s]).mean(0), torch.stack([v for _, v in s]).mean(0), bns[name]) for name, s in seen.items()}


def test_calibrated_statistics_are_the_mean_of_the_batch_statistics(rs_run, tmp_path):
    run = copy_run(rs_run, tmp_path / "run")
    subnets = [SubNet(40), SubNet(16), SubNet(32)]  # nearest, interpolated, trained
    calibrate_run(run, subnets, images=40, batch_size=16)  # batches of 16, 16 and 8
    calibrated = load_artifact(run).model.state_dict()
    original = load_artifact(rs_run)
    for subnet in subnets:
        expected = _mean_batch_statistics(original.model, original.task, subnet, [40, 32, 16], 40, 16)
        assert len(expected) == len(switchable_bns(original.model))
        for path, (mean, var, bn) in expected.items():
            key = f"body.{path}.calibrated.{subnet.id}"
            torch.testing.assert_close(calibrated[f"{key}.running_mean"], mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(calibrated[f"{key}.running_var"], var, rtol=1e-4, atol=1e-5)
            assert int(calibrated[f"{key}.num_batches_tracked"]) == 3
            # the affine parameters are those the layer used for this sub-network before
            torch.testing.assert_close(calibrated[f"{key}.weight"], bn.weight)
            torch.testing.assert_close(calibrated[f"{key}.bias"], bn.bias)


def test_calibration_beats_interpolation_at_untrained_resolutions(rs_run, tmp_path, capsys):
    """Between trained 32 and 8 the interpolated BN misjudges the brightness threshold (see
    calib_fixtures); statistics measured at 24 and 16 set it right."""
    run = copy_run(rs_run, tmp_path / "run")
    before = _eval(run, ["32", "24", "16", "8"], capsys)
    assert [before[r]["status"] for r in (32, 24, 16, 8)] == ["trained", "interpolated", "interpolated", "trained"]
    code, _, err = run_cli(["calibrate", str(run), "--res", "24", "16", "--images", "192", "--batch-size", "64"], capsys)
    assert code == 0, err
    after = _eval(run, ["24", "16"], capsys)
    for r in (24, 16):
        assert after[r]["status"] == "calibrated"
        assert after[r]["top1"] > before[r]["top1"] and after[r]["top1"] >= 95.0


def _calibrated_tensors(run, subnet: str) -> dict[str, torch.Tensor]:
    state = load_artifact(run).model.state_dict()
    return {k: v.clone() for k, v in state.items() if f".calibrated.{subnet}." in k}


def test_a_run_keeps_its_groups_and_other_calibrations(rs_run, tmp_path, capsys):
    run = copy_run(rs_run, tmp_path / "run")
    weights, meta = file_sha256(run / WEIGHTS), (run / "rsvision.json").read_text()
    calibrate_run(run, [24], images=32, batch_size=16)
    calibrate_run(run, [16], images=16, batch_size=16)
    first_16, first_24 = _calibrated_tensors(run, "16"), _calibrated_tensors(run, "24")
    calibrate_run(run, [16], images=48, batch_size=16)  # replaces 16, keeps 24
    again_16 = _calibrated_tensors(run, "16")
    assert not torch.equal(again_16[next(k for k in again_16 if k.endswith("running_var"))], first_16[next(k for k in first_16 if k.endswith("running_var"))])
    assert all(torch.equal(v, first_24[k]) for k, v in _calibrated_tensors(run, "24").items())
    calibrate_run(run, [16], images=16, batch_size=16)  # from the trained groups again: the first result
    assert all(torch.equal(v, first_16[k]) for k, v in _calibrated_tensors(run, "16").items())

    assert file_sha256(run / WEIGHTS) == weights and (run / "rsvision.json").read_text() == meta
    reloaded, trained = load_artifact(run).model, load_artifact(rs_run).model
    groups = {k: v for k, v in trained.state_dict().items() if ".calibrated." not in k}
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in groups.items())
    assert {s: subnet_status(reloaded, s) for s in (32, 24, 20, 16, 8)} == {
        32: "trained", 24: "calibrated", 20: "interpolated", 16: "calibrated", 8: "trained"
    }
    rows = _eval(run, ["24", "20"], capsys)
    assert (rows[24]["status"], rows[20]["status"]) == ("calibrated", "interpolated")


def test_statistics_of_other_weights_are_ignored(rs_run, tmp_path):
    run = copy_run(rs_run, tmp_path / "run")
    calibrate_run(run, [16], images=16)
    state = load_file(str(run / WEIGHTS))
    key = next(k for k in state if k.endswith("conv1.weight"))
    state[key] = state[key] * 1.01  # the run trained on after its calibration
    save_file(state, str(run / WEIGHTS))
    with pytest.warns(UserWarning, match="measured on other weights"):
        model = load_artifact(run).model
    assert subnet_status(model, 16) == "interpolated"


def test_a_failed_calibration_keeps_the_earlier_groups(rs_run, tmp_path):
    artifact = load_artifact(copy_run(rs_run, tmp_path / "run"))
    model, task = artifact.model, artifact.task
    calibrate(model, task, [16], images=16)
    before = {k: v.clone() for k, v in model.state_dict().items() if ".calibrated." in k}
    collate, calls = task.eval_collate, []

    def fail_on_second_batch(samples):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk gone")
        return collate(samples)

    task.eval_collate = fail_on_second_batch
    with pytest.raises(OSError):
        calibrate(model, task, [16, 24], images=64, batch_size=16)
    after = {k: v for k, v in model.state_dict().items() if ".calibrated." in k}
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert all(not m.training for bn in switchable_bns(model) for m in bn.calibrated.values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["calibrate", "{tmp}", "--res", "16"], "not an rsvision run folder (no rsvision.json)"),
        (["calibrate", "{tmp}/absent", "--res", "16"], "absent: no such run folder"),
        (["calibrate", "{run}/rsvision.json", "--res", "16"], "rsvision.json: calibration writes into a run folder; this is a file"),
        (["calibrate", "{run}", "--res", "16", "--images", "0"], "--images: expected at least 1 image, got 0"),
        (["calibrate", "{run}", "--res", "16w50"], "cannot calibrate sub-network 16w50 (0.50x @ 16x16)"),
        (["calibrate", "{run}", "--res", "64:32:16"], "--res 64:32:16: the stop (32) is below the start (64)"),
        (["calibrate", "{run}", "--res", "sixteen"], "--res sixteen: expected a size (224), a range"),
        (["eval", "--checkpoint", "{run}", "--res", "a:b"], "--res a:b: expected a size (224) or a range START:STOP:STEP"),
        (["eval", "--checkpoint", "{run}", "--res", "8:16:4", "12"], "--res: 12 is given twice"),
    ],
)
def test_bad_input_is_one_line_naming_it(rs_run, tmp_path, capsys, args, message):
    run = copy_run(rs_run, tmp_path / "run")
    code, _, err = run_cli([a.format(tmp=tmp_path, run=run) for a in args], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (run / CALIBRATION).exists()
