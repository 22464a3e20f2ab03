"""Calibrating a run folder: recompute BN statistics and keep them in its calibration file.

Statistics are measured where the model is (``device``), always in float32
(:mod:`rsvision.analysis.device`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from rsvision.analysis.device import AUTO, resolve_device, to_device
from rsvision.errors import UserError
from rsvision.nn.bn_stats import (
    DEFAULT_IMAGES,
    calibrate,
    calibrated_subnets,
    check_servable,
)
from rsvision.run.calibration import save_calibration
from rsvision.run.files import CALIBRATION, WEIGHTS
from rsvision.run.folder import load_artifact
from rsvision.subnet import SubNet, SubNetLike, check_scale, subnets_of
from rsvision.training import method_for


def calibrate_run(
    run_dir: str | Path,
    subnets: Sequence[SubNetLike],
    images: int = DEFAULT_IMAGES,
    batch_size: int | None = None,
    data_root: str | None = None,
    progress=None,
    device: str | torch.device | None = AUTO,
) -> dict:
    """Calibrate ``subnets`` of a run folder on ``device`` and store them in its ``calibration.safetensors``.

    Earlier calibrated groups of other sub-networks are kept; those asked again are redone.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such run folder")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: calibration writes into a run folder; this is a file")

    device = resolve_device(device)
    artifact = to_device(load_artifact(run_dir, data_root), device)
    check_scale(subnets, artifact.model.resolutions, str(run_dir))
    for subnet in subnets_of(subnets):
        check_servable(artifact.model, subnet, str(run_dir))
    seed = artifact.task.recipe.train.seed
    used = calibrate(artifact.model, artifact.task, subnets, images, batch_size, seed, progress)
    save_calibration(artifact.model, run_dir / CALIBRATION, run_dir / WEIGHTS)
    return {
        "run": str(run_dir),
        "subnets": [s.id for s in subnets_of(subnets)],
        "images": used,
        "file": str(run_dir / CALIBRATION),
        "calibrated": [s.id for s in calibrated_subnets(artifact.model)],
    }


def calibrate_missing(artifact, subnets: Sequence[SubNet], images: int | None = None, progress=None) -> tuple[list[SubNet], int]:
    """Recompute the BN statistics of the ``subnets`` that have none of their own (the training
    method says which: post-hoc BN); saved to the run's calibration file when ``artifact``
    is a run folder. Returns them and the number of images used."""
    task, model = artifact.task, artifact.model
    method = method_for(task.recipe)(model, task, task.recipe)
    missing = method.uncalibrated(list(subnets))
    if not missing:
        return [], 0
    used = calibrate(model, task, missing, images or DEFAULT_IMAGES, seed=task.recipe.train.seed, progress=progress)
    run = Path(artifact.path)
    if run.is_dir():
        save_calibration(model, run / CALIBRATION, run / WEIGHTS)
    return missing, used

