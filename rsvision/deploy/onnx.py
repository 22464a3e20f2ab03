"""ONNX: the exporter, onnxruntime sessions, and their latency."""

from __future__ import annotations

#: Names of the exported graph's input and output.
INPUT, OUTPUT = "input", "logits"
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rsvision.analysis.latency import REPEATS, WARMUP, check_threads, median_ms
from rsvision.errors import UserError


def onnx_ms(path: str | Path, example: torch.Tensor, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """An ONNX file in an onnxruntime CPU session with ``threads`` intra-op threads (default every core)."""
    check_threads(threads)
    sess = session(path, threads)
    image = example[0] if isinstance(example, list) else example  # a detector's graph takes one [C, H, W] image
    feed = {sess.get_inputs()[0].name: image.detach().cpu().numpy()}
    return median_ms(lambda: sess.run(None, feed), repeats, warmup)


OPSET = 18


INSTALL_HINT = 'pip install "rsvision[deploy]"'


def require(*modules: str) -> None:
    """Raise a one-line :class:`UserError` naming the first of ``modules`` that is not installed."""
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"{name} is not installed: {INSTALL_HINT}") from None


def has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_network(network: nn.Module, example: torch.Tensor, path: str | Path, opset: int = OPSET) -> None:
    """Write ``network`` (eval mode) to ``path`` as one ONNX file, batch dimension dynamic."""
    require("onnx", "onnxscript")
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            network, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"{path}: the ONNX exporter failed ({type(exc).__name__}: {first})") from exc
    program.save(str(path), external_data=False)


#: Outputs of an exported detector and their shapes, one row per detection (D).
DETECTION_OUTPUTS = {"boxes": ["D", 4], "labels": ["D"], "scores": ["D"]}


def detection_outputs(masks: bool) -> dict[str, list]:
    """An exported detector's output names and shapes (Mask R-CNN adds ``masks``)."""
    return DETECTION_OUTPUTS | ({"masks": ["D", 1, "H", "W"]} if masks else {})


def export_detector(network: nn.Module, image: torch.Tensor, path: str | Path, masks: bool, opset: int = OPSET) -> None:
    """Write a torchvision detector (eval mode) to ``path``: input one ``[C, H, W]`` image in
    [0, 1] of any size, outputs :data:`DETECTION_OUTPUTS` (and ``masks``) in the image's pixels.

    torchvision's detectors export through the TorchScript-based exporter only (their
    resizing and NMS are data-dependent), so this one uses it.
    """
    import warnings

    outputs = list(detection_outputs(masks))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network, ([image],), str(path), dynamo=False, opset_version=opset, input_names=["image"], output_names=outputs,
                dynamic_axes={"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in outputs}},
            )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"{path}: the ONNX exporter failed ({type(exc).__name__}: {first})") from exc


def run_detector_session(sess, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """One image's detections from an exported detector."""
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, {sess.get_inputs()[0].name: image.detach().cpu().numpy().astype(np.float32)})
    return {name: torch.from_numpy(v) for name, v in zip(names, values)}


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session: ``threads`` intra-op threads (default: every core), all graph optimisations."""
    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable ONNX model ({first})") from None


def run_session(sess, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().numpy().astype(np.float32)})[0])

