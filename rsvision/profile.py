"""Cost per resolution: parameters, multiply-adds and CPU latency.

Multiply-adds come from ``torch.utils.flop_counter`` (FLOPs / 2, the paper's "MAdds"),
counted at batch 1 for one resolution at a time.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rsvision.switchable import SwitchableBatchNorm, at_resolution


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn_affine_parameters(model: nn.Module) -> int:
    """Affine parameters of one BN group: what each extra resolution adds."""
    total, inside = 0, set()
    for m in model.modules():
        if isinstance(m, SwitchableBatchNorm):
            total += sum(p.numel() for p in next(iter(m.groups.values())).parameters())
            inside.update(id(g) for g in [*m.groups.values(), *m.calibrated.values()])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


@torch.no_grad()
def count_madds(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of one forward pass on ``example`` (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward pass, in milliseconds."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        model.train(was_training)
    return statistics.median(times)


def profile_resolutions(model: nn.Module, resolutions: list[int], example_for, latency: bool = True) -> list[dict]:
    """One row per resolution: ``resolution``, ``madds`` and (optionally) ``latency_ms``."""
    rows = []
    for r in resolutions:
        example = example_for(r)
        with at_resolution(model, r):
            row = {"resolution": r, "madds": count_madds(model, example)}
            if latency:
                row["latency_ms"] = cpu_latency_ms(model, example)
        rows.append(row)
    return rows


def human(n: float) -> str:
    """1.82G, 931M, 11.18M style numbers, as in the paper's tables."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.2f}{unit}" if value < 10 else f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(int(n))


def profile_model(model: nn.Module, resolutions: list[int], example_for, latency: bool = True) -> dict:
    """Parameters of the plain network and of the RS-Net, and per-resolution costs.

    An RS-Net with S resolutions has the plain count + (S - 1) x the BN affine parameters.
    """
    from rsvision.switchable import trained_resolutions

    S = len(trained_resolutions(model)) or 1
    bn_affine = bn_affine_parameters(model)
    rsnet = count_parameters(model)
    return {
        "parameters_plain": rsnet - (S - 1) * bn_affine,
        "parameters_rsnet": rsnet,
        "bn_affine": bn_affine,
        "num_resolutions": S,
        "rows": profile_resolutions(model, resolutions, example_for, latency),
    }


def profile_backbone(backbone: str, resolutions: list[int], num_classes: int = 1000, latency: bool = True) -> dict:
    """Profile a registered backbone with the classifier head as an RS-Net over ``resolutions``."""
    from rsvision.models import create_model

    model = create_model(backbone=backbone, num_classes=num_classes, resolutions=resolutions)
    return profile_model(model, resolutions, lambda r: torch.zeros(1, 3, r, r), latency)


def profile_run(run_dir, resolutions: list[int], latency: bool = True) -> dict:
    """Profile a trained run at ``resolutions`` (the untrained ones through interpolated BN)."""
    from rsvision.artifacts import load_artifact
    from rsvision.ranges import check_scale

    artifact = load_artifact(run_dir)
    check_scale(resolutions, artifact.model.resolutions, str(artifact.path))
    return profile_model(artifact.model, resolutions, artifact.task.example_input, latency)
