"""Latency of one sub-network at batch 1 on this machine, three ways.

- ``eager``: the switchable PyTorch model, the sub-network chosen with ``at_subnet``;
- ``folded``: the plain PyTorch network of the sub-network, BN folded into the
  convolutions, weights channels-last (:func:`rsvision.nn.fold.plain_subnet`, what
  ``rsvision.load(run).at(r)`` runs);
- ``onnxruntime``: its exported ONNX graph in an onnxruntime CPU session (every graph
  optimisation on; intra-op threads = the threads asked for, default every core).

Each is the median wall time of ``repeats`` calls after ``warmup`` calls, in
milliseconds. PyTorch runs with ``threads`` intra-op threads (restored afterwards), on the
device the network and its example are on; on a CUDA device each timed call is bracketed
by ``torch.cuda.synchronize`` (kernels run asynchronously: without it the clock measures
the launch, not the work).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from rsvision.analysis.device import device_of
from rsvision.errors import UserError
from rsvision.nn.surgery import eval_mode
from rsvision.nn.switchable import at_subnet
from rsvision.subnet import SubNetLike

REPEATS = 20
WARMUP = 3


def median_ms(fn: Callable[[], Any], repeats: int = REPEATS, warmup: int = WARMUP, device: torch.device | str | None = None) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls; ``fn``'s
    work on a CUDA ``device`` is waited for before and after each timed call."""
    cuda = device is not None and torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def check_threads(threads: int | None) -> None:
    """Refuse a thread count below 1 (None: every core)."""
    if threads is not None and threads < 1:
        raise UserError(f"threads: expected a positive number of threads, got {threads}")


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run PyTorch with ``threads`` intra-op threads inside the block (None: leave as is)."""
    check_threads(threads)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def eager_ms(model: nn.Module, subnet: SubNetLike, example: torch.Tensor, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """The switchable model run as ``subnet`` (its mode is restored afterwards)."""
    with torch_threads(threads), eval_mode(model), at_subnet(model, subnet):
        return median_ms(lambda: model(example), repeats, warmup, device_of(model))


@torch.no_grad()
def network_ms(network: nn.Module, example: torch.Tensor, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """A plain network (e.g. BN-folded), in eval mode (its mode is restored afterwards)."""
    with torch_threads(threads), eval_mode(network):
        return median_ms(lambda: network(example), repeats, warmup, device_of(network))


