"""``train.compile: true``: the run folder holds the network's own keys, so it loads and evaluates."""

import functools

import pytest
import torch
from conftest import tiny_recipe_dict
from safetensors.torch import load_file, save_file

from rsvision.analysis.evaluate import evaluate_artifact
from rsvision.engine import train
from rsvision.recipe import validate_recipe
from rsvision.run.folder import load_artifact


def _run(tmp_path, compile: bool):
    data = tiny_recipe_dict(tmp_path, resolutions=[12, 8], train={"compile": compile, "epochs": 1, "max_steps_per_epoch": 1})
    return train(validate_recipe(data), name="compiled" if compile else "eager", quiet=True)


def _metrics(rows):
    return [{k: v for k, v in r.items() if k != "madds"} for r in rows]


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with Dynamo's eager backend: the same module wrapping and state keys as
    Inductor, without minutes of code generation on a CPU."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))


def test_a_compiled_run_loads_and_evaluates(tmp_path, eager_compile):
    run = _run(tmp_path, compile=True)
    assert not [k for k in load_file(str(run / "model.safetensors")) if "_orig_mod" in k]
    artifact = load_artifact(run)
    assert _metrics(evaluate_artifact(artifact)) == artifact.meta["metrics"]


def test_a_folder_written_with_the_compiled_prefix_still_loads(tmp_path):
    """Compiled runs saved when the body was wrapped hold ``body._orig_mod.*`` keys."""
    run = _run(tmp_path, compile=False)
    weights = load_file(str(run / "model.safetensors"))
    save_file({k.replace("body.", "body._orig_mod.", 1): v for k, v in weights.items()}, str(run / "model.safetensors"))
    artifact = load_artifact(run)
    assert all(torch.equal(v, weights[k]) for k, v in artifact.model.state_dict().items())


@pytest.mark.cuda
def test_an_inductor_compiled_run_on_cuda_loads_and_evaluates(tmp_path):
    run = _run(tmp_path, compile=True)
    artifact = load_artifact(run)
    assert _metrics(evaluate_artifact(artifact)) == artifact.meta["metrics"]
