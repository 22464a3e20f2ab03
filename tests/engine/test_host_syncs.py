"""Feeding a GPU: a training step's loss terms and accuracies stay on the device and are read
every few steps (so the GPU is not made to wait for the host to read a number), batches come
from pinned memory and copy without waiting, and cuDNN autotunes a fixed set of shapes."""

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_recipe_dict
from rsvision.tasks.base import Task
from torch.utils._python_dispatch import TorchDispatchMode

from rsvision.engine import TrainingDiverged, train, trainer
from rsvision.models import build_model
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS
from rsvision.training import StepOutput, method_for


class CountedReads(TorchDispatchMode):
    """Counts the reads of a tensor's values by the host: ``aten._local_scalar_dense``
    (``.item()``, ``float()``, ``int()``, ``bool()``) and, through :meth:`tolist`, ``Tensor.tolist``.
    Numbers drawn from a host generator (``generator=``, e.g. MutualNet's sandwich draws)
    never were on a device and are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.host_draws: dict[int, torch.Tensor] = {}  # by storage, which detached aliases share; kept alive, so never reused
        self.real_tolist = torch.Tensor.tolist

    def tolist(self, tensor: torch.Tensor) -> list:
        self.reads += 1
        return self.real_tolist(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].untyped_storage().data_ptr() not in self.host_draws:
            self.reads += 1
        out = func(*args, **kwargs)
        if kwargs.get("generator") is not None and isinstance(out, torch.Tensor):
            self.host_draws[out.untyped_storage().data_ptr()] = out
        return out


def _reads(tmp_path, monkeypatch, steps: int, **overrides) -> int:
    """Host reads of a one-epoch run of ``steps`` training steps (evaluation and saving included).
    A loader process prepares the samples, as on a GPU machine: its reads are CPU work of its own."""
    data = tiny_recipe_dict(tmp_path / str(steps), train={"epochs": 1, "max_steps_per_epoch": steps}, **overrides)
    data["data"] |= {"workers": 1, "oversubscribe": True}
    recipe = validate_recipe(data)
    mode = CountedReads()
    with monkeypatch.context() as patch, mode:
        patch.setattr(torch.Tensor, "tolist", lambda tensor: mode.tolist(tensor))
        train(recipe, name="syncs", quiet=True)
    return mode.reads


def _reads_per_step(tmp_path, monkeypatch, **overrides) -> float:
    """The reads one more training step costs, on average: two runs that differ in their number
    of steps only (the same evaluation and saving). The logged numbers are read every 2 steps
    here (every 25 by default), so the 4 extra steps include 2 readings."""
    monkeypatch.setattr(trainer, "READ_EVERY", 2)
    return (_reads(tmp_path, monkeypatch, 5, **overrides) - _reads(tmp_path, monkeypatch, 1, **overrides)) / 4


def test_an_rsnet_step_leaves_the_device_alone_but_for_the_periodic_reading(tmp_path, monkeypatch):
    assert _reads_per_step(tmp_path, monkeypatch) == 0.5  # 2 readings in 4 steps, none in a step


def test_a_mutualnet_step_reads_its_draw_counter_once(tmp_path, monkeypatch):
    widths = {"range": [0.25, 1.0], "divisor": 2, "calibration_images": 8}
    assert _reads_per_step(tmp_path, monkeypatch, widths=widths) == 1.5  # and the periodic reading


def _loop(tmp_path) -> SimpleNamespace:
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    return SimpleNamespace(accelerator=accelerator, run_dir=tmp_path, recipe=SimpleNamespace(source="r.yaml"))


def test_a_reading_gives_the_epoch_means_of_device_and_host_numbers(tmp_path):
    log = trainer.StepLog()
    log.add(0, StepOutput(torch.tensor(1.0), {"loss": torch.tensor(1.0), "acc": torch.tensor(50.0), "weight": 0.5}), lr=0.1)
    log.add(1, StepOutput(torch.tensor(3.0), {"loss": torch.tensor(3.0), "acc": torch.tensor(100.0), "weight": 1.0}), lr=0.1)
    assert trainer._read(log, _loop(tmp_path), epoch=0) == {"loss": 2.0, "acc": 75.0, "weight": 0.75}
    assert log.unread == []
    log.add(2, StepOutput(torch.tensor(5.0), {"loss": torch.tensor(5.0), "acc": torch.tensor(0.0), "weight": 1.5}), lr=0.1)
    assert trainer._read(log, _loop(tmp_path), epoch=0) == {"loss": 3.0, "acc": 50.0, "weight": 1.0}  # over the epoch so far


def test_a_reading_names_the_first_non_finite_loss_since_the_last_one(tmp_path):
    log = trainer.StepLog()
    for index, (loss, lr) in enumerate([(1.0, 0.1), (float("inf"), 0.2), (float("nan"), 0.3)], start=6):
        log.add(index, StepOutput(torch.tensor(loss), {"loss": torch.tensor(loss)}), lr)
    with pytest.raises(TrainingDiverged, match=r"^r.yaml: training diverged at epoch 2, step 8: the loss is inf \(train.lr 0.2\).*keeps epoch 1"):
        trainer._read(log, _loop(tmp_path), epoch=1)


RSNET = SimpleNamespace(fixed_shapes=True)
RANGE = SimpleNamespace(fixed_shapes=False)


def test_cudnn_autotunes_on_cuda_for_a_fixed_set_of_shapes_only(monkeypatch):
    cuda = torch.device("cuda")
    assert trainer.cudnn_autotuning(RSNET, cuda)[0]
    assert trainer.cudnn_autotuning(RANGE, cuda) == (False, "SimpleNamespace's steps do not see a fixed set of input shapes")
    assert trainer.cudnn_autotuning(RSNET, torch.device("cpu")) == (False, "no cuDNN on cpu")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    assert trainer.cudnn_autotuning(RSNET, cuda) == (False, "deterministic algorithms requested")


@pytest.mark.parametrize(
    "widths, fixed",
    [(None, True), ({"range": [0.25, 1.0], "divisor": 4}, False), ({"list": [1.0, 0.5], "divisor": 4}, True)],
)
def test_which_methods_see_a_fixed_set_of_shapes(tmp_path, widths, fixed):
    recipe = validate_recipe(tiny_recipe_dict(tmp_path, **({"widths": widths} if widths else {})))
    assert method_for(recipe)(build_model(recipe), TASKS.get("cls")(recipe), recipe).fixed_shapes is fixed


def test_the_run_records_its_autotuning(tmp_path):
    run = train(validate_recipe(tiny_recipe_dict(tmp_path, train={"epochs": 1, "max_steps_per_epoch": 1})), name="meta", quiet=True)
    assert json.loads((run / "rsvision.json").read_text())["cudnn_benchmark"] == {"enabled": False, "reason": "no cuDNN on cpu"}


@pytest.mark.cuda
def test_on_cuda_batches_come_pinned_and_copy_without_waiting_and_cudnn_autotunes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    loop = trainer._prepare(validate_recipe(tiny_recipe_dict(tmp_path)), "cuda", resume=False, quiet=True)
    try:
        assert loop.loader.pin_memory and loop.loader._non_blocking
        assert torch.backends.cudnn.benchmark and loop.autotuning[0]
    finally:
        loop.accelerator.end_training()


def test_the_training_accuracy_stays_a_tensor_and_skips_ignored_pixels():
    logits = torch.tensor([[[[2.0, 0.0, 0.0, 1.0]], [[0.0, 1.0, 3.0, 0.0]]]])  # [1, 2 classes, 1, 4 pixels]: 0 1 1 0
    batch = {"target": torch.tensor([[[0, 0, 1, 255]]])}  # right, wrong, right, ignored
    accuracy = Task.batch_accuracy(SimpleNamespace(ignore_index=255), logits, batch)
    assert isinstance(accuracy, torch.Tensor) and accuracy.item() == pytest.approx(200 / 3)
    assert Task.batch_accuracy(SimpleNamespace(ignore_index=None), logits, batch).item() == 50.0  # 2 of 4
