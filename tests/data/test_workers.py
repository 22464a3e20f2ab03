"""``data.workers`` on a CPU: loader processes only where the compute threads leave cores."""

import json

import pytest
import torch
from conftest import tiny_recipe_dict

import rsvision.data.workers as workers_module
from rsvision.data.workers import loader_workers
from rsvision.engine import train
from rsvision.recipe import validate_recipe


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize(
    "requested, cores, device, expected",
    [
        (1, 2, "cpu", 0),  # 2 threads fill 2 cores: load in the main process
        (2, 4, "cpu", 2),  # 2 threads + 2 workers fit 4 cores
        (3, 4, "cpu", 0),
        (0, 2, "cpu", 0),
        (1, 2, "meta", 1),  # not a CPU: the recipe's number
    ],
)
def test_workers_fit_beside_the_compute_threads(monkeypatch, two_threads, requested, cores, device, expected):
    monkeypatch.setattr(workers_module, "usable_cores", lambda: cores)
    workers, reason = loader_workers(requested, device)
    assert workers == expected
    assert reason.startswith(f"data.workers: {requested}")


def test_oversubscribe_starts_the_workers_anyway(monkeypatch, two_threads):
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 2)
    workers, reason = loader_workers(2, "cpu", oversubscribe=True)
    assert workers == 2
    assert "oversubscribe" in reason


def test_training_on_full_cores_loads_in_the_main_process(monkeypatch, two_threads, tmp_path):
    monkeypatch.setattr(workers_module, "usable_cores", lambda: 2)
    built = []
    original = torch.utils.data.DataLoader.__init__

    def spy(self, *args, **kwargs):
        built.append(kwargs.get("num_workers", 0))
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", spy)
    data = tiny_recipe_dict(tmp_path, train={"epochs": 1})
    data["data"]["workers"] = 1
    run = train(validate_recipe(data, "tiny"), quiet=True)
    meta = json.loads((run / "rsvision.json").read_text())
    assert meta["data_workers"]["workers"] == 0
    assert "-> 0" in meta["data_workers"]["reason"]
    assert built and set(built) == {0}  # training and evaluation loaders alike
