"""Where a trained network runs after training, and in which precision.

Every command that runs a trained network (``eval``, ``calibrate``, ``query``, ``plot``,
``export``, ``deploy``, ``predict``, ``profile``) and :func:`rsvision.load` take a device:
``auto`` (the default) is the first CUDA GPU when PyTorch sees one, else the CPU;
``cpu``, ``cuda``, ``cuda:N`` and ``mps`` name one (:func:`resolve_device`).

The precision rule (:func:`autocast_dtype`): on a CUDA device, a run trained in mixed
precision (``train.mixed_precision: bf16`` or ``fp16``) runs inference in autocast of that
dtype, as it was trained and validated; everything else runs in float32, so results on
the CPU do not depend on the option. BN statistics are always recomputed in float32
(:func:`rsvision.nn.bn_stats.calibrate` averages over thousands of images), and ONNX
export traces and checks on the CPU.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

from rsvision.errors import UserError

AUTO = "auto"
#: ``train.mixed_precision`` → the autocast dtype inference uses on CUDA.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device | None = AUTO, option: str = "--device") -> torch.device:
    """The device ``spec`` names (None or ``auto``: CUDA when present, else the CPU); one-line
    :class:`UserError` naming ``option`` for a string that is not a device or a device this
    machine does not have."""
    if is_auto(spec):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec.strip().lower() if isinstance(spec, str) else spec)
    except (RuntimeError, TypeError):
        raise UserError(f"{option} {spec}: not a device (expected auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option} {spec}: CUDA is not available on this machine (PyTorch sees no GPU); use --device cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"{option} {spec}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"{option} {spec}: MPS is not available on this machine; use --device cpu or auto")
    elif device.type != "cpu":
        raise UserError(f"{option} {spec}: not supported here (expected auto, cpu, cuda, cuda:N or mps)")
    return device


def is_auto(spec: str | torch.device | None) -> bool:
    """Whether ``spec`` leaves the choice to :func:`resolve_device` (None or ``auto``)."""
    return spec is None or (isinstance(spec, str) and spec.strip().lower() == AUTO)


def autocast_dtype(mixed_precision: str | None, device: torch.device | str) -> torch.dtype | None:
    """The precision rule (module docstring): the autocast dtype of a run trained with
    ``mixed_precision`` on ``device``, or None for float32."""
    if torch.device(device).type != "cuda":
        return None
    return AUTOCAST_DTYPES.get(mixed_precision or "no")


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s parameters (the CPU for one without any)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def inference_precision(recipe: Any, module: nn.Module) -> ContextManager:
    """Autocast for ``module`` (of a run trained with ``recipe``) by the precision rule; a no-op
    in float32."""
    device = device_of(module)
    dtype = autocast_dtype(recipe.train.mixed_precision, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def precision_name(recipe: Any, module: nn.Module) -> str:
    """``fp32``, or the autocast dtype's name (``bf16``, ``fp16``) the rule picks for ``module``."""
    dtype = autocast_dtype(recipe.train.mixed_precision, device_of(module))
    return "fp32" if dtype is None else recipe.train.mixed_precision


def to_device(artifact, device: str | torch.device | None = AUTO, option: str = "--device"):
    """``artifact`` (:class:`rsvision.run.folder.Artifact`) with its model moved to ``device``
    (resolved by :func:`resolve_device`); returns it."""
    artifact.model.to(resolve_device(device, option))
    return artifact


@contextmanager
def on_device(module: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """``module`` moved to ``device`` inside the block, back where it was afterwards."""
    home = device_of(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)
