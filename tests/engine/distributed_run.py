"""Train a tiny RS-Net with the real engine; run by tests/engine/test_distributed.py as one plain
process or under ``torchrun --nproc_per_node 2`` (CPU, gloo).

Usage: ``python distributed_run.py OUT_DIR MEMORY GRAD_ACCUM [widths | private]
[channels_last=auto|true] [sync_bn]``. ``widths`` trains MutualNet over a width range (post-hoc BN),
``private`` over a width list with a BN per sub-network. Every process writes
``OUT_DIR/rank<r>.json`` (world size, backend, the sample indices it trained on, and with
widths the sub-networks MutualNet's sandwich rule drew at each step); the run
folder holds the weights. Data are fixed tensors, so the processes differ only in the
samples the sampler gives them.
"""

import json
import os
import sys
from pathlib import Path

import torch
from rsvision.tasks.base import Task
from rsvision.tasks.classification import ClassificationMetrics
from torch.utils.data import Dataset
from torchmetrics.aggregation import SumMetric

import rsvision.training.mutual as mutual
from rsvision.engine import train, trainer
from rsvision.recipe import validate_recipe
from rsvision.registry import register_task

RESOLUTIONS, CLASSES, TRAIN, VAL = [12, 10, 8], 3, 32, 10
SEEN: list[int] = []
GROUP: dict = {"world_size": 1, "backend": None}
BUFFERS: list[list[float]] = []  # the network's buffers as each evaluation saw them


def _recording_evaluate(real):
    def evaluate(model, *args, **kwargs):
        BUFFERS.append([float(b.double().sum()) for b in model.buffers()])
        return real(model, *args, **kwargs)

    return evaluate


DRAWS: list[list[str]] = []
_sandwich = mutual.sandwich


def _recorded_sandwich(*args, **kwargs):
    draw = _sandwich(*args, **kwargs)
    DRAWS.append([s.id for s in draw])
    return draw


mutual.sandwich = _recorded_sandwich


class FixedImages(Dataset):
    """Sample i: a seeded random image at every resolution and label i mod 3."""

    def __init__(self, size: int, resolutions: list[int], offset: int, record: bool) -> None:
        self.size, self.resolutions, self.offset, self.record = size, resolutions, offset, record

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if self.record:
            SEEN.append(i)
        g = torch.Generator().manual_seed(self.offset + i)
        images = [torch.randn(3, r, r, generator=g) + (i % CLASSES) for r in self.resolutions]
        return {"images": images, "target": i % CLASSES}


class CountedMetrics(ClassificationMetrics):
    """Top-1/top-5 and the number of evaluated images, reduced across processes."""

    def __init__(self) -> None:
        super().__init__(CLASSES)
        self.count = SumMetric()
        if torch.distributed.is_initialized():  # what really runs, seen while evaluating
            GROUP.update(world_size=torch.distributed.get_world_size(), backend=torch.distributed.get_backend())

    def update(self, logits, batch) -> None:
        super().update(logits, batch)
        self.count.update(torch.tensor(float(len(batch["target"]))))

    def compute(self) -> dict:
        return {**super().compute(), "images": int(self.count.compute())}


@register_task("fixed_cls")
class FixedTask(Task):
    primary_metric = "top1"

    def train_dataset(self) -> Dataset:
        return FixedImages(TRAIN, self.resolutions, 0, record=True)

    def eval_dataset(self, resolutions, split="val") -> Dataset:
        return FixedImages(VAL, list(resolutions), 10_000, record=False)

    def metrics(self):
        return CountedMetrics()

    def class_names(self):
        return [str(c) for c in range(CLASSES)]


WIDTHS = {
    "widths": {"range": [0.5, 1.0], "divisor": 2, "calibration_images": 8},
    "private": {"list": [1.0, 0.75, 0.5], "divisor": 2, "bn": "private"},
}


def main(out: Path, memory: str, grad_accum: int, widths: str | None = None, channels_last: bool | str = False, sync_bn: bool = False) -> None:
    torch.set_num_threads(1)
    extra = {"widths": WIDTHS[widths]} if widths else {}
    recipe = validate_recipe(
        {
            **extra,
            "task": "fixed_cls",
            "resolutions": RESOLUTIONS,
            "model": {"backbone": "resnet8", "num_classes": CLASSES, "backbone_args": {"width": 4}},
            "data": {"dataset": "synthetic", "batch_size": 4, "eval_batch_size": 4, "workers": 0},
            "train": {"epochs": 2, "lr": 0.1, "weight_decay": 1e-4, "seed": 0, "grad_accum": grad_accum, "memory": memory, "channels_last": channels_last, "sync_bn": sync_bn},
            "output_dir": str(out / "runs"),
        }
    )
    trainer.evaluate = _recording_evaluate(trainer.evaluate)
    run_dir = train(recipe, name="ddp", quiet=True)
    rank = int(os.environ.get("RANK", 0))
    info = {
        "rank": rank,
        **GROUP,
        "seen": SEEN,
        "buffers": BUFFERS,
        "draws": DRAWS,
        "run_dir": str(run_dir),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    options = sys.argv[4:]  # "widths" or "private", "channels_last=auto|true", "sync_bn"
    layout = next((o.split("=", 1)[1] for o in options if o.startswith("channels_last=")), False)
    widths = next((o for o in options if o in WIDTHS), None)
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), widths, {"auto": "auto", "true": True}.get(layout, False), "sync_bn" in options)
