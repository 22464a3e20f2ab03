"""Cost per resolution: parameters, multiply-adds and latency on a device.

Multiply-adds come from ``torch.utils.flop_counter`` (FLOPs / 2, the paper's "MAdds"),
counted at batch 1 for one resolution at a time. Latency is the eager switchable model's
at batch 1 (:func:`rsvision.analysis.latency.eager_ms`) on the model's device, in the
precision evaluation uses there (:mod:`rsvision.analysis.device`).
"""

from __future__ import annotations

import torch
from accelerate.utils import send_to_device
from torch import nn

from rsvision.analysis.device import AUTO, device_of, inference_precision, resolve_device, to_device
from rsvision.analysis.latency import eager_ms
from rsvision.models import create_model
from rsvision.nn.cost import bn_affine_parameters, count_parameters, subnet_madds
from rsvision.nn.switchable import trained_resolutions
from rsvision.run.folder import load_artifact
from rsvision.subnet import check_scale


def profile_resolutions(model: nn.Module, resolutions: list[int], example_for, latency: bool = True) -> list[dict]:
    """One row per resolution: ``resolution``, ``madds`` and (optionally) ``latency_ms``, on the model's device."""
    rows = []
    for r in resolutions:
        example = send_to_device(example_for(r), device_of(model))
        row = {"resolution": r, "madds": subnet_madds(model, r, example)}
        if latency:
            row["latency_ms"] = eager_ms(model, r, example)
        rows.append(row)
    return rows


def profile_model(model: nn.Module, resolutions: list[int], example_for, latency: bool = True) -> dict:
    """Parameters of the plain network and of the RS-Net, and per-resolution costs.

    An RS-Net with S resolutions has the plain count + (S - 1) x the BN affine parameters.
    """
    S = len(trained_resolutions(model)) or 1
    bn_affine = bn_affine_parameters(model)
    rsnet = count_parameters(model)
    return {
        "parameters_plain": rsnet - (S - 1) * bn_affine,
        "parameters_rsnet": rsnet,
        "bn_affine": bn_affine,
        "num_resolutions": S,
        "rows": profile_resolutions(model, resolutions, example_for, latency),
        "device": str(device_of(model)),
    }


def profile_backbone(backbone: str, resolutions: list[int], num_classes: int = 1000, latency: bool = True, device: str | torch.device | None = AUTO) -> dict:
    """Profile a registered backbone with the classifier head as an RS-Net over ``resolutions`` on ``device`` (float32)."""
    device = resolve_device(device)
    model = create_model(backbone=backbone, num_classes=num_classes, resolutions=resolutions).to(device)
    return profile_model(model, resolutions, lambda r: torch.zeros(1, 3, r, r), latency)


def profile_run(run_dir, resolutions: list[int], latency: bool = True, device: str | torch.device | None = AUTO) -> dict:
    """Profile a trained run at ``resolutions`` (the untrained ones through interpolated BN) on ``device``."""
    device = resolve_device(device)
    artifact = to_device(load_artifact(run_dir), device)
    check_scale(resolutions, artifact.model.resolutions, str(artifact.path))
    with inference_precision(artifact.task.recipe, artifact.model):  # multiply-adds count the same in any precision
        return profile_model(artifact.model, resolutions, artifact.task.example_input, latency)
