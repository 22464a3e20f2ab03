"""The manifest of an export folder: what each ONNX file is, how to feed it, and its digest."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from rsvision.constants import VERSION
from rsvision.deploy.onnx import INPUT, OUTPUT
from rsvision.errors import UserError
from rsvision.io import file_sha256, write_json

FORMAT = "rsvision-onnx"


MANIFEST = "manifest.json"


def rsvision_version() -> str:
    try:
        return version("rsvision")
    except PackageNotFoundError:
        return VERSION


def output_description(kind: str, num_classes: int) -> dict[str, Any]:
    if kind == "detection":
        return {
            "names": ["boxes", "labels", "scores", "masks (Mask R-CNN)"],
            "meaning": "one row per detection: boxes [D, 4] as x1, y1, x2, y2 in the input image's pixels, labels [D] "
            "(1..K: class_names[label - 1]), scores [D]; masks [D, 1, H, W] probabilities at the image's size (> 0.5: the mask)",
        }
    if kind == "classification":
        return {"name": OUTPUT, "shape": ["N", num_classes], "meaning": "class scores (logits); softmax gives probabilities"}
    return {
        "name": OUTPUT,
        "shape": ["N", num_classes, "h", "w"],
        "meaning": "per-pixel class scores at the head's stride (h, w per sub-network below); "
        "upsample bilinearly (align_corners=False) to the image's size, then arg-max over classes",
    }


def _input_description(kind: str, input_format) -> dict[str, Any]:
    if kind == "detection":  # the graph normalises: feed x / 255
        return {"name": "image", "layout": "CHW", "dtype": "float32", "batch": "one image", "channels": input_format.channels, "mean": None, "std": None}
    return {"name": INPUT, "layout": "NCHW", "dtype": "float32", "batch": "dynamic", **input_format.as_dict()}


def view_description(kind: str) -> dict[str, str]:
    if kind == "detection":
        return {"name": "detector", "text": "one [C, H, W] image in [0, 1], any size: the graph resizes its shorter side to r, normalises and batches it"}
    if kind == "classification":
        return {"name": "center_crop", "text": "shorter side resized to int(r / 0.875) (bilinear, antialiased), centre crop r x r"}
    return {"name": "resize", "text": "whole image resized to r x r (bilinear, antialiased), normalised first"}


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(Path(out_dir) / MANIFEST, manifest)


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """The manifest of an export directory (checked to be one)."""
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    if not export_dir.is_dir():
        raise UserError(f"{export_dir}: no such export directory")
    if not path.is_file():
        raise UserError(f"{export_dir}: no {MANIFEST} (not an ONNX export directory; write one with `rsvision export RUN --format onnx`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not manifest.get("subnets"):
        raise UserError(f"{path}: not an rsvision ONNX manifest")
    return manifest


def subnet_file(export_dir: str | Path, entry: dict[str, Any], verify: bool = True) -> Path:
    """The ONNX file of one manifest entry, its SHA-256 checked against the manifest."""
    path = Path(export_dir) / entry["file"]
    if not path.is_file():
        raise UserError(f"{path}: missing (listed in {MANIFEST})")
    if verify and file_sha256(path) != entry.get("sha256"):
        raise UserError(f"{path}: corrupt or changed since export (SHA-256 differs from {MANIFEST})")
    return path


def build_manifest(artifact, entries: list[dict[str, Any]], quantization: dict | None, opset: int, check: dict[str, Any]) -> dict[str, Any]:
    """The manifest of an export of ``artifact`` (a loaded run): the task, classes, how to feed
    the graphs (input format and the evaluation view), what they output, and one entry per
    sub-network (``entries``)."""
    task = artifact.task
    shape = entries[0]["output_shape"]
    kind = "detection" if isinstance(shape, dict) else "classification" if len(shape) == 2 else "dense"
    num_classes = task.recipe.model.num_classes
    return {
        "format": FORMAT,
        "rsvision": rsvision_version(),
        "torch": torch.__version__,
        "opset": opset,
        "source": str(artifact.path),
        "task": artifact.meta.get("task", task.recipe.task),
        "class_names": list(artifact.meta.get("class_names") or [str(i) for i in range(num_classes)]),
        "input": _input_description(kind, task.input_format),
        "view": view_description(kind),
        "output": output_description(kind, num_classes),
        "quantization": quantization,
        "check": check,
        "subnets": entries,
    }
