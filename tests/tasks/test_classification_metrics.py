"""Top-1 / top-5 counting of the classification task, by hand and against torchmetrics."""

import pytest
import torch
from rsvision.tasks.classification import ClassificationMetrics
from torchmetrics.classification import MulticlassAccuracy


def test_top1_and_top5_by_hand():
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # label 0: first
            [1.0, 9, 2, 3, 4, 5, 6],  # label 3: fifth largest
            [1.0, 2, 9, 3, 4, 5, 6],  # label 0: last
            [6.0, 5, 4, 3, 2, 1, 9],  # label 1: third largest
        ]
    )
    metrics = ClassificationMetrics(num_classes=7)
    metrics.update(logits[:2], {"target": torch.tensor([0, 3])})
    metrics.update(logits[2:], {"target": torch.tensor([0, 1])})
    assert metrics.compute() == {"top1": 25.0, "top5": 75.0}


def test_top_k_is_capped_at_the_number_of_classes():
    metrics = ClassificationMetrics(num_classes=3)
    metrics.update(torch.tensor([[0.0, 1, 2], [2.0, 1, 0]]), {"target": torch.tensor([0, 0])})
    assert metrics.compute() == {"top1": 50.0, "top5": 100.0}


def test_no_samples_score_zero():
    assert ClassificationMetrics(num_classes=10).compute() == {"top1": 0.0, "top5": 0.0}


@pytest.mark.parametrize("num_classes", [3, 10, 100])
def test_agrees_with_torchmetrics(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    ours = ClassificationMetrics(num_classes)
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
    for size in (17, 64, 1):
        logits, target = torch.randn(size, num_classes, generator=g), torch.randint(num_classes, (size,), generator=g)
        ours.update(logits, {"target": target})
        top1.update(logits, target)
        top5.update(logits, target)
    scores = ours.compute()
    assert scores["top1"] == pytest.approx(100 * float(top1.compute()), abs=1e-4)
    assert scores["top5"] == pytest.approx(100 * float(top5.compute()), abs=1e-4)


def test_counts_stay_where_they_were_put_batch_or_no_batch():
    """A process whose shard is empty still reduces a tensor on the evaluation's device."""
    metrics = ClassificationMetrics(num_classes=10).to("meta")
    assert metrics.counts.device.type == "meta"


def test_evaluating_classification_imports_no_torchmetrics():
    import subprocess
    import sys

    code = (
        "import sys, torch, rsvision.tasks\n"
        "from rsvision.tasks.classification import ClassificationMetrics\n"
        "m = ClassificationMetrics(10); m.update(torch.randn(4, 10), {'target': torch.tensor([0, 1, 2, 3])}); m.compute()\n"
        "print('torchmetrics' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
