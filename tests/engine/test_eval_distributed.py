"""Evaluation over a process group: metric states on the evaluation's device, and two
processes (gloo) scoring exactly what one process scores, shards of unequal size and an
empty shard (fewer images than processes) included.

Every case runs once without a process group and once in each of two spawned processes;
each process evaluates its contiguous share of the images (:func:`process_shard`) and the
metrics reduce over the group.
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.aggregation import SumMetric
from rsvision.tasks.classification import ClassificationMetrics
from rsvision.tasks.detection import DetectionMetrics
from rsvision.tasks.segmentation import SegmentationMetrics

from rsvision.engine.evaluate import evaluate, process_shard
from rsvision.recipe import validate_recipe
from rsvision.registry import TASKS

#: Detector settings small enough for a test (tests/tasks/test_detection.py's); every detection kept.
SMALL_DETECTOR = {"fpn_channels": 16, "anchor_sizes": [8, 16, 32, 64], "box_representation": 32, "rpn_pre_nms_top_n_test": 50,
                  "rpn_post_nms_top_n_test": 20, "box_score_thresh": 0.0}  # fmt: skip


def _task(kind: str, images: int):
    if kind == "cls":
        recipe = {
            "task": "cls",
            "resolutions": [16, 12],
            "model": {"backbone": "resnet8", "num_classes": 10, "backbone_args": {"width": 4}},
            "data": {"dataset": "synthetic", "batch_size": 2, "workers": 0, "args": {"train_size": 2, "val_size": images, "image_size": 16}},
        }
    else:
        recipe = {
            "task": "det",
            "resolutions": [64, 32],
            "model": {"backbone": "resnet8", "backbone_args": {"width": 4, "stem_stride": 4}, "head": "fasterrcnn", "num_classes": 3,
                      "head_args": SMALL_DETECTOR},
            "data": {"dataset": "synthetic_det", "normalize": False, "batch_size": 2, "workers": 0,
                     "args": {"train_size": 2, "val_size": images, "canvas": 64, "min_item": 10, "max_item": 30}},
        }  # fmt: skip
    recipe = validate_recipe(recipe)
    return TASKS.get(recipe.task)(recipe)


class _Counted(ClassificationMetrics):
    """Top-1/top-5 and the number of images scored."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.count = SumMetric()

    def update(self, logits, batch) -> None:
        super().update(logits, batch)
        self.count.update(torch.tensor(float(len(logits)), device=logits.device))

    def compute(self) -> dict[str, float]:
        return {**super().compute(), "images": float(self.count.compute())}


def _evaluated(kind: str, images: int) -> list[dict[str, Any]]:
    task = _task(kind, images)
    if kind == "cls":
        task.metrics = lambda: _Counted(10)
    torch.manual_seed(0)
    return evaluate(task.build_model(), task, task.resolutions, batch_size=2, workers=0)


def _boxes_and_masks(i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Image i of a hand-made set: two objects, three detections of mixed quality (distinct scores)."""
    truth = torch.tensor([[2.0, 2, 14, 14], [16, 16, 30, 30]]) + i
    boxes = torch.stack([truth[0] + torch.tensor([0.0, 0, 1, 1]) * i, truth[1] + 3, torch.tensor([0.0, 20, 8, 30])])
    scores = torch.tensor([0.9, 0.6, 0.3]) - 0.05 * i
    labels = torch.tensor([1, 2, 1 + i % 2])

    def masks(b: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(len(b), 32 + 3, 32 + 3)
        for k, (x0, y0, x1, y1) in enumerate(b.round().long().tolist()):
            m[k, y0:y1, x0:x1] = 1
        return m

    pred = {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks(boxes)[:, None]}
    target = {"boxes": truth, "labels": torch.tensor([1, 2]), "iscrowd": torch.zeros(2, dtype=torch.long), "masks": masks(truth)}
    return pred, target


def _scored(metrics, items: list[tuple[torch.Tensor, dict[str, Any]]]) -> dict[str, float]:
    """``metrics`` fed this process's share of ``items`` (``(logits, batch)`` pairs), then computed."""
    for logits, batch in process_shard(items):
        metrics.update(logits, batch)
    return metrics.compute()


def _hand_made(images: int) -> dict[str, dict[str, float]]:
    g = torch.Generator().manual_seed(images)
    cls = [(torch.randn(2, 7, generator=g), {"target": torch.randint(7, (2,), generator=g)}) for _ in range(images)]
    seg = [(torch.randn(1, 4, 5, 6, generator=g), {"target": torch.randint(4, (1, 5, 6), generator=g)}) for _ in range(images)]
    det = [([pred], {"target": [target]}) for pred, target in map(_boxes_and_masks, range(images))]
    return {
        "cls": _scored(ClassificationMetrics(7), cls),
        "seg": _scored(SegmentationMetrics(4), seg),
        "det": _scored(DetectionMetrics(masks=True), det),
    }


def _everything() -> dict[str, Any]:
    torch.set_num_threads(1)
    return {
        "cls3": _evaluated("cls", 3),  # shares of 1 and 2 images
        "cls1": _evaluated("cls", 1),  # the first process has no image
        "det3": _evaluated("det", 3),
        "hand3": _hand_made(3),
        "hand1": _hand_made(1),
    }


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    results[rank] = _everything()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def evaluations() -> tuple[dict, dict, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2)
    return _everything(), results[0], results[1]


def test_shares_are_contiguous_unpadded_and_may_be_empty(monkeypatch):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    shares = {}
    for rank in (0, 1):
        monkeypatch.setattr(dist, "get_rank", lambda rank=rank: rank)
        shares[rank] = {n: list(process_shard(list(range(n)))) for n in (5, 1, 0)}
    assert shares[0] == {5: [0, 1], 1: [], 0: []}
    assert shares[1] == {5: [2, 3, 4], 1: [0], 0: []}


@pytest.mark.parametrize("case", ["cls3", "cls1", "det3"])
def test_two_processes_evaluate_what_one_does(evaluations, case):
    one, first, second = evaluations
    assert first[case] == second[case]  # every process returns the group's numbers
    assert [row.keys() for row in first[case]] == [row.keys() for row in one[case]]
    for row, alone in zip(first[case], one[case]):
        assert row == {k: pytest.approx(v, abs=1e-9) if isinstance(v, float) else v for k, v in alone.items()}
    if case.startswith("cls"):
        assert [row["images"] for row in first[case]] == [int(case[3:])] * 2  # each image once


@pytest.mark.parametrize("images", [3, 1])
@pytest.mark.parametrize("kind", ["cls", "seg", "det"])
def test_metrics_reduce_unequal_and_empty_shares(evaluations, images, kind):
    one, first, second = evaluations
    scores = one[f"hand{images}"][kind]
    assert first[f"hand{images}"][kind] == second[f"hand{images}"][kind] == pytest.approx(scores, abs=1e-9)
    if kind == "det":  # a score that says something: neither perfect nor empty
        assert 0 < scores["ap"] < 100 and 0 < scores["mask_ap"] < 100


def test_metric_states_move_with_to():
    cls, seg, det = ClassificationMetrics(5), SegmentationMetrics(3), DetectionMetrics()
    for m in (cls, seg, det):
        assert m.to("meta") is m
    states = [cls.counts, *seg.confusion.metric_state.values()]
    assert states and all(s.device.type == "meta" for s in states)
    assert det.map.device.type == "meta"
    assert ClassificationMetrics(5, device="meta").counts.device.type == "meta"
    assert DetectionMetrics(device="meta").map.device.type == "meta"


class _Placed(ClassificationMetrics):
    devices: list[torch.device] = []

    def to(self, device):
        _Placed.devices.append(torch.device(device))
        return super().to(device)


def _placed_on(device: str) -> list[torch.device]:
    task = _task("cls", 2)
    task.metrics = lambda: _Placed(10)
    _Placed.devices = []
    torch.manual_seed(0)
    evaluate(task.build_model().to(device), task, [16], batch_size=2, workers=0)
    return _Placed.devices


def test_evaluation_puts_the_states_where_it_runs():
    assert _placed_on("cpu") == [torch.device("cpu")]


@pytest.mark.cuda
def test_evaluation_puts_the_states_on_the_gpu():
    assert [d.type for d in _placed_on("cuda")] == ["cuda"]



def _one_process_group(rank: int, port: int, backend: str, device: str, results) -> None:
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=1, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    rows = {}
    for kind in ("cls", "det"):
        task = _task(kind, 3)
        torch.manual_seed(0)
        rows[kind] = evaluate(task.build_model().to(device), task, task.resolutions, batch_size=2, workers=0)
    results[0] = rows
    dist.destroy_process_group()


@pytest.mark.cuda
def test_a_one_process_nccl_group_evaluates_on_the_gpu():
    """torchmetrics reduces even over one process; NCCL reduces GPU tensors only, which the
    metric states now are (before, detection stopped: "No backend type associated with
    device type cpu")."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_one_process_group, args=(port, "nccl", "cuda", results), nprocs=1)
    rows = results[0]
    for kind in ("cls", "det"):
        names = ("top1", "top5") if kind == "cls" else ("ap", "ap50")
        assert [r["subnet"] for r in rows[kind]] == [str(r) for r in _task(kind, 3).resolutions]
        assert all(0 <= r[name] <= 100 or r[name] == -1 for r in rows[kind] for name in names)
