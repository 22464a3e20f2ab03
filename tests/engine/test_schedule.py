"""The learning rate follows the schedule over the optimiser updates that really happen."""

import math

import pytest
from conftest import tiny_recipe_dict

from rsvision.engine import train
from rsvision.engine import trainer as trainer_module
from rsvision.engine.schedule import learning_rate
from rsvision.recipe import TrainConfig, validate_recipe
from rsvision.training import MREDTraining


def test_cosine_step_and_warmup_values():
    cos = TrainConfig(epochs=2, lr=0.1, schedule="cosine")
    assert [round(learning_rate(cos, k, 3), 6) for k in range(6)] == [0.1, 0.093301, 0.075, 0.05, 0.025, 0.006699]
    step = TrainConfig(epochs=4, lr=0.1, schedule="step", milestones=[1, 3], gamma=0.1)
    assert [learning_rate(step, k, 2) for k in range(8)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.01, 0.001, 0.001])
    warm = TrainConfig(epochs=2, lr=0.1, schedule="constant", warmup_epochs=1)
    assert [learning_rate(warm, k, 4) for k in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def _record_updates(monkeypatch) -> list[tuple[float, int]]:
    """(learning rate, micro-batches since the previous update) of every optimiser step."""
    updates: list[tuple[float, int]] = []
    pending = [0]
    real_forward, real_build = MREDTraining.forward, trainer_module.build_optimizer

    def forward(self, batch):
        pending[0] += 1
        return real_forward(self, batch)

    def build_optimizer(method, recipe):
        optimizer = real_build(method, recipe)

        def hook(opt, args, kwargs):
            updates.append((opt.param_groups[0]["lr"], pending[0]))
            pending[0] = 0

        optimizer.register_step_pre_hook(hook)
        return optimizer

    monkeypatch.setattr(MREDTraining, "forward", forward)
    monkeypatch.setattr(trainer_module, "build_optimizer", build_optimizer)
    return updates


def test_partial_accumulation_window_is_scheduled(tmp_path, monkeypatch):
    """5 batches per epoch, grad_accum 2, 2 epochs: 6 updates (windows 2, 2, 1 per epoch),
    annealed over all 6 (it was [0.1, .085, .05, .015, 0, 0]: a third of training at lr 0)."""
    updates = _record_updates(monkeypatch)
    data = tiny_recipe_dict(tmp_path, train={"epochs": 2, "lr": 0.1, "grad_accum": 2})
    data["data"]["args"]["train_size"] = 40
    train(validate_recipe(data), name="accum", quiet=True)
    assert [n for _, n in updates] == [2, 2, 1, 2, 2, 1]
    expected = [0.05 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert [lr for lr, _ in updates] == pytest.approx(expected)


def test_no_micro_batch_leaks_across_epochs(tmp_path, monkeypatch):
    """max_steps_per_epoch 5 of 7 batches, grad_accum 2: each epoch ends with its own update."""
    updates = _record_updates(monkeypatch)
    data = tiny_recipe_dict(tmp_path, train={"epochs": 2, "lr": 0.1, "grad_accum": 2, "max_steps_per_epoch": 5})
    data["data"]["args"]["train_size"] = 56
    train(validate_recipe(data), name="leak", quiet=True)
    assert [n for _, n in updates] == [2, 2, 1, 2, 2, 1]


def test_short_window_gradient_is_the_mean_of_its_micro_batches(tmp_path, monkeypatch):
    """Each micro-batch's loss is divided by its window's size: 2 for a full window, 1 for the
    last micro-batch of an epoch alone in its window (not by grad_accum regardless)."""
    backwarded: list[float] = []
    losses: list[float] = []
    real_forward = MREDTraining.forward

    def forward(self, batch):
        out = real_forward(self, batch)
        losses.append(float(out.loss.detach()))
        return out

    def backward(self, loss, **kwargs):
        backwarded.append(float(loss.detach()))
        loss.backward()

    monkeypatch.setattr(MREDTraining, "forward", forward)
    monkeypatch.setattr(trainer_module.Accelerator, "backward", backward)
    data = tiny_recipe_dict(tmp_path, train={"epochs": 1, "lr": 0.1, "grad_accum": 2})
    data["data"]["args"]["train_size"] = 24  # 3 batches: windows of 2 and 1
    train(validate_recipe(data), name="scale", quiet=True)
    assert backwarded == pytest.approx([losses[0] / 2, losses[1] / 2, losses[2]])
