"""How many DataLoader processes a run uses for ``data.workers`` on its device.

On a CPU the loader's processes share the cores with the network's compute threads. When
they do not fit beside them, each burst of a worker preempts one compute thread and every
parallel kernel waits at its barrier for that thread: on 2 cores with 2 threads, one worker
made a Fashion-MNIST RS-Net's run 1.7x slower and its evaluations 4-7x slower
(docs/benchmarks.md, "Epoch time"), although the worker was busy about a tenth of the time. Such
a run loads its samples in the main process instead, between the steps; each sample is
seeded by (seed, epoch, index), so the batches are the same either way.
"""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(requested: int, device: torch.device | str, oversubscribe: bool = False) -> tuple[int, str]:
    """``(workers, reason)``: ``requested`` unless the device is a CPU whose cores the compute
    threads (``torch.get_num_threads()``) already fill, then 0 (``oversubscribe``: ``requested``
    regardless, ``data.oversubscribe``)."""
    if requested == 0 or torch.device(device).type != "cpu":
        return requested, f"data.workers: {requested}"
    if oversubscribe:
        return requested, f"data.workers: {requested} (data.oversubscribe: true)"
    threads, cores = torch.get_num_threads(), usable_cores()
    if requested + threads <= cores:
        return requested, f"data.workers: {requested} ({threads} compute threads on {cores} cores)"
    return 0, (
        f"data.workers: {requested} -> 0: the {threads} compute threads fill the {cores} cores, so the "
        f"samples are loaded in the main process (data.oversubscribe: true starts the workers anyway)"
    )
