"""The memory layout of training steps: NCHW (``contiguous``) or NHWC (``channels_last``).

``train.channels_last: auto`` chooses by measurement on the run's own first steps: a
warm-up step and a timed step in each layout in turn, then the faster layout for the rest
of the run. The trial steps are ordinary training steps (the layouts differ only in
rounding), so choosing costs no extra computation. A resumed run keeps the layout its
first run chose. Runs of several processes choose before DDP wraps the network (DDP's
gradient buckets keep the layout of the parameters it wraps), on extra steps that leave
no trace (:meth:`LayoutChoice.decide`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from accelerate.utils import broadcast_object_list
from torch import nn

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def to_layout(batch: Any, layout: torch.memory_format) -> Any:
    """Image batches (4-D float tensors) of ``batch`` in ``layout``."""
    if layout is not torch.channels_last:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=layout) if batch.dim() == 4 and batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: to_layout(v, layout) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_layout(v, layout) for v in batch)
    return batch


class LayoutChoice:
    """The layout of each training step of ``module``.

    ``name`` is the layout in use once known: given (``setting`` true/false, or ``saved``
    by the run being resumed) or, for ``auto``, chosen after the trial steps. Every process
    runs the same trial and keeps the main process's choice.
    """

    def __init__(self, setting: bool | str, saved: str | None, module: nn.Module, accelerator) -> None:
        self.module, self.accelerator = module, accelerator
        self.name = saved or (None if setting == "auto" else "channels_last" if setting else "contiguous")
        self.trial = [] if self.name else [(name, timed) for name in LAYOUTS for timed in (False, True)]
        self.times: dict[str, float] = {}
        self.module.to(memory_format=LAYOUTS[self.name or self.trial[0][0]])

    @contextmanager
    def step(self) -> Iterator[torch.memory_format]:
        """Around one training step's forward and backward; yields the layout of its inputs."""
        if not self.trial:
            yield LAYOUTS[self.name]
            return
        name, timed = self.trial.pop(0)
        layout = LAYOUTS[name]
        self.module.to(memory_format=layout)
        if not timed:  # warm-up: first-call costs (kernel choice, allocations) stay out of the timing
            yield layout
        else:
            start = self._clock()
            yield layout
            self.times[name] = self._clock() - start
        if not self.trial:
            self._choose()

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
        self.module.to(memory_format=LAYOUTS[self.name])

    def _clock(self) -> float:
        """Seconds, after the device has finished its queued work."""
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        return time.perf_counter()
