"""The memory layout of training steps: NCHW (``contiguous``) or NHWC (``channels_last``).

The two layouts round differently, so the layout is part of what makes a run's weights:
the default, ``train.channels_last: device``, follows a fixed rule that reads no clock
(channels-last on CUDA, whose cuDNN kernels prefer it, and on the CPU, whose oneDNN
convolutions are faster in it for the small networks CPUs train; contiguous elsewhere,
and on the CPU for a network that oneDNN cannot train in channels-last, below), so the
same recipe and seed give the same weights on the same machine whatever its load. ``true`` /
``false`` fix the layout. ``auto`` (opt-in) chooses by measurement on the run's own first
steps: a warm-up step and a timed step in each layout in turn, then the faster layout for
the rest of the run; the trial steps are ordinary training steps, so choosing costs no
extra computation, but the choice, and so the weights, can change with the machine's
load. A resumed run keeps the layout its first run used. Launched runs (a process group,
even of one process) choose before DDP wraps the network (DDP's gradient buckets keep the
layout of the parameters it wraps), on extra steps on the training device that leave no
trace (:meth:`LayoutChoice.decide`).

oneDNN 3.12 (PyTorch 2.14) computes wrong weight gradients, writing past its workspace, in
the channels-last backward of a strided 1x1 convolution with fewer input channels per group
than its channel block (8 with AVX2, 16 with AVX-512; oneDNN issue 6035): a network with
such a convolution (:func:`onednn_hazard`) trains channels-last on the CPU without oneDNN
(:meth:`LayoutChoice._kernels`), and its CPU default is contiguous.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from accelerate.utils import broadcast_object_list
from torch import nn

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
#: The largest channel block of oneDNN's 1x1 backward-weights kernels (AVX-512; AVX2's is 8).
ONEDNN_CHANNEL_BLOCK = 16


def onednn_hazard(module: nn.Module) -> str | None:
    """The name of the first strided 1x1 convolution of ``module`` with fewer input channels
    per group than :data:`ONEDNN_CHANNEL_BLOCK` (whose channels-last backward oneDNN gets
    wrong, module docstring), or None."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels // m.groups < ONEDNN_CHANNEL_BLOCK:
            return name or type(m).__name__
    return None


def to_layout(batch: Any, layout: torch.memory_format) -> Any:
    """Image batches (4-D float tensors, or the uint8 crops the device normalises) of ``batch`` in ``layout``."""
    if layout is not torch.channels_last:
        return batch
    if isinstance(batch, torch.Tensor):
        image = batch.dim() == 4 and (batch.is_floating_point() or batch.dtype == torch.uint8)
        return batch.contiguous(memory_format=layout) if image else batch
    if isinstance(batch, dict):
        return {k: to_layout(v, layout) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_layout(v, layout) for v in batch)
    return batch


class LayoutChoice:
    """The layout of each training step of ``module``.

    ``name`` is the layout in use once known: given (``setting`` true/false), by the device
    rule (``device``), ``saved`` by the run being resumed, or, for ``auto``, chosen after
    the trial steps; ``reason`` says which. Every process runs the same trial and keeps the
    main process's choice.
    """

    def __init__(self, setting: bool | str, saved: str | None, module: nn.Module, accelerator, saved_reason: str | None = None) -> None:
        self.module, self.accelerator = module, accelerator
        self.hazard = onednn_hazard(module) if accelerator.device.type == "cpu" else None
        self.name, self.reason = self._rule(setting, saved, saved_reason, accelerator.device.type, self.hazard)
        self.trial = [] if self.name else [(name, timed) for name in LAYOUTS for timed in (False, True)]
        self.times: dict[str, float] = {}
        self.module.to(memory_format=LAYOUTS[self.name or self.trial[0][0]])

    @staticmethod
    def _rule(setting: bool | str, saved: str | None, saved_reason: str | None, device: str, hazard: str | None) -> tuple[str | None, str]:
        if saved:
            return saved, saved_reason or "kept from the run's start"
        if setting == "auto":
            return None, "timed on the first steps, train.channels_last: auto"
        if setting == "device":
            if device == "cpu" and hazard:
                return "contiguous", f"the rule for cpu, train.channels_last: device; {hazard} is a strided 1x1 convolution oneDNN cannot train channels-last"
            return ("channels_last" if device in ("cuda", "cpu") else "contiguous"), f"the rule for {device}, train.channels_last: device"
        return ("channels_last" if setting else "contiguous"), f"train.channels_last: {str(setting).lower()}"

    @contextmanager
    def step(self) -> Iterator[torch.memory_format]:
        """Around one training step's forward and backward; yields the layout of its inputs."""
        if not self.trial:
            with self._kernels(LAYOUTS[self.name]):
                yield LAYOUTS[self.name]
            return
        name, timed = self.trial.pop(0)
        layout = LAYOUTS[name]
        self.module.to(memory_format=layout)
        with self._kernels(layout):
            if not timed:  # warm-up: first-call costs (kernel choice, allocations) stay out of the timing
                yield layout
            else:
                start = self._clock()
                yield layout
                self.times[name] = self._clock() - start
        if not self.trial:
            self._choose()

    @contextmanager
    def _kernels(self, layout: torch.memory_format) -> Iterator[None]:
        """Channels-last steps on the CPU of a network with a convolution oneDNN gets wrong
        (:func:`onednn_hazard`) run PyTorch's own convolutions (about 4x slower)."""
        if layout is not torch.channels_last or not self.hazard:
            yield
            return
        enabled = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = enabled

    def decide(self, step: Callable[[torch.memory_format], None]) -> None:
        """Run the trial now, on ``step`` (called with each layout), rather than on the
        run's first training steps."""
        while self.trial:
            with self.step() as layout:
                step(layout)

    def _choose(self) -> None:
        choice = [min(self.times, key=self.times.get)]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(choice, from_process=0)
        self.name = choice[0]
        self.reason += " (" + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.times.items()) + " a step)"
        self.module.to(memory_format=LAYOUTS[self.name])

    def _clock(self) -> float:
        """Seconds, after the device has finished its queued work."""
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()
