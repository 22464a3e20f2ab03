"""Run folders and packed files written by rsvision 0.1.0 (before sub-network keys) load and
give the same numbers (tests/fixtures/old_format/README.md)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rsvision.analysis.evaluate import evaluate_artifact
from rsvision.run.folder import load_artifact

OLD = Path(__file__).parents[1] / "fixtures" / "old_format"
EXPECTED = json.loads((OLD / "expected.json").read_text())
PROBE = load_file(str(OLD / "probe.safetensors"))


def _same_row(new: dict, old: dict) -> None:
    if old["resolution"] == "ensemble":
        assert new["subnet"] == "ensemble"
    else:
        assert new["resolution"] == old["resolution"] and new["subnet"] == str(old["resolution"])
        assert new["status"] == ("interpolated" if old.get("interpolated") else "trained")
    for key in ("top1", "top5", "madds", "alpha"):
        if key in old:  # the stored percentages were computed in float32 (7 of 12 right: 58.33333134651184)
            assert new[key] == pytest.approx(old[key], rel=1e-7, abs=1e-6), key


@pytest.mark.parametrize("name", ["old_run", "old_packed.lq"])
def test_old_artifacts_evaluate_to_the_same_metrics(name):
    artifact = load_artifact(OLD / name, data_root=str(OLD / "images"))
    for key, subnets in ((name, [24, 16, 10, 8]), (f"{name}:default", None)):
        rows = evaluate_artifact(artifact, subnets)
        assert len(rows) == len(EXPECTED[key])
        for new, old in zip(rows, EXPECTED[key]):
            _same_row(new, old)


@pytest.mark.parametrize("name", ["old_run", "old_packed.lq"])
def test_old_artifacts_give_the_same_logits(name):
    model = load_artifact(OLD / name, data_root=str(OLD / "images")).model
    for r in (24, 16, 10, 8):
        with torch.no_grad():
            logits = model(PROBE[f"{name}/{r}/input"])
        # To float rounding: the probe was written by an older PyTorch, whose CPU convolution
        # kernels sum in another order (PyTorch 2.14 differs in the last bit at 24 px).
        torch.testing.assert_close(logits, PROBE[f"{name}/{r}/logits"], rtol=1e-5, atol=1e-6, msg=f"{name} at {r}")


def test_old_packed_alpha_has_the_common_name():
    artifact = load_artifact(OLD / "old_packed.lq", data_root=str(OLD / "images"))
    assert set(artifact.tensors) == {"mred.alpha"} and artifact.alpha.shape == (3,)
