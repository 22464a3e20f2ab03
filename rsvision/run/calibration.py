"""The calibration file of a run folder: recomputed BN statistics stored beside the weights.

``calibration.safetensors`` holds the calibrated groups (:mod:`rsvision.nn.bn_stats`) and,
in its header, the sub-networks and the SHA-256 of the weights they were measured on.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from rsvision.errors import UserError
from rsvision.io import file_sha256, save_tensors
from rsvision.nn.bn_stats import calibrated_subnets, calibration_state
from rsvision.nn.switchable import switchable_bns
from rsvision.subnet import SubNet

FORMAT = "rsvision-calibration"


def save_calibration(model: nn.Module, path: Path, weights: Path | None = None) -> None:
    """Store the calibrated groups of ``model``; with ``weights``, the digest of the weights file they belong to."""
    ids = [s.id for s in calibrated_subnets(model)]
    header = {"format": FORMAT, "subnets": json.dumps(ids)}
    if weights is not None:
        header["weights_sha256"] = file_sha256(weights)
    save_tensors(path, calibration_state(model), header)


def load_calibration(model: nn.Module, path: Path, weights: Path | None = None) -> list[SubNet]:
    """Add the calibrated groups stored in ``path`` to ``model``; returns their sub-networks.

    Statistics measured on other weights than ``weights`` (the run trained on after its
    calibration) would be wrong: they are skipped with a warning.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise UserError(f"{path}: cannot read calibrated statistics ({exc})") from None
    if header.get("format") != FORMAT:
        raise UserError(f"{path}: not an rsvision calibration file")
    try:
        subnets = [SubNet.parse(i) for i in json.loads(header["subnets"])]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: the header lists no valid sub-networks") from None
    if weights is not None and header.get("weights_sha256") not in (None, file_sha256(weights)):
        warnings.warn(f"{path}: ignored: measured on other weights than {weights} (the run changed since); run `rsvision calibrate` again", stacklevel=2)
        return []
    bns = switchable_bns(model)
    for subnet in subnets:
        for bn in bns:
            bn.add_calibrated(subnet).eval()
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{path}: does not fit the model ({str(exc).splitlines()[-1].strip()})") from None
    left = [k for k in missing if ".calibrated." in k]
    if unexpected or left:
        raise UserError(f"{path}: does not fit the model (unexpected {unexpected[:3]}, missing {left[:3]})")
    return subnets

