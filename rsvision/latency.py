"""Latency of one sub-network at batch 1 on this machine, three ways.

- ``eager``: the switchable PyTorch model, the sub-network chosen with ``at_subnet``;
- ``folded``: the plain PyTorch network of the sub-network, BN folded into the
  convolutions, weights channels-last (:func:`rsvision.fold.plain_subnet`, what
  ``rsvision.load(run).at(r)`` runs);
- ``onnxruntime``: its exported ONNX graph in an onnxruntime CPU session (every graph
  optimisation on; intra-op threads = the threads asked for, default every core).

Each is the median wall time of ``repeats`` calls after ``warmup`` calls, in
milliseconds. PyTorch runs with ``threads`` intra-op threads (restored afterwards).
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from rsvision.errors import UserError
from rsvision.subnet import SubNet, SubNetLike
from rsvision.switchable import at_subnet

REPEATS = 20
WARMUP = 3


def median_ms(fn: Callable[[], Any], repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
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


@contextmanager
def _eval(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def eager_ms(model: nn.Module, subnet: SubNetLike, example: torch.Tensor, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """The switchable model run as ``subnet`` (its mode is restored afterwards)."""
    with torch_threads(threads), _eval(model), at_subnet(model, subnet):
        return median_ms(lambda: model(example), repeats, warmup)


@torch.no_grad()
def network_ms(network: nn.Module, example: torch.Tensor, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """A plain network (e.g. BN-folded), in eval mode (its mode is restored afterwards)."""
    with torch_threads(threads), _eval(network):
        return median_ms(lambda: network(example), repeats, warmup)


def onnx_ms(path: str | Path, example: torch.Tensor, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """An ONNX file in an onnxruntime CPU session with ``threads`` intra-op threads (default every core)."""
    from rsvision.onnx_export import session

    check_threads(threads)
    sess = session(path, threads)
    feed = {sess.get_inputs()[0].name: example.detach().cpu().numpy()}
    return median_ms(lambda: sess.run(None, feed), repeats, warmup)


def measure_subnet(
    model: nn.Module,
    subnet: SubNetLike,
    example: torch.Tensor,
    onnx_path: str | Path | None = None,
    threads: int | None = None,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
) -> dict[str, float]:
    """``eager``, ``folded`` and (given its exported file) ``onnxruntime`` latency of one sub-network, in ms."""
    from rsvision.fold import plain_subnet

    subnet = SubNet.parse(subnet)
    out = {
        "eager": eager_ms(model, subnet, example, threads, repeats, warmup),
        "folded": network_ms(plain_subnet(model, subnet, channels_last=True).network, example, threads, repeats, warmup),
    }
    if onnx_path is not None:
        out["onnxruntime"] = onnx_ms(onnx_path, example, threads, repeats, warmup)
    return out


def profile_export(export_dir: str | Path, threads: int | None = None, repeats: int = REPEATS, warmup: int = WARMUP) -> dict[str, Any]:
    """onnxruntime latency at batch 1 and the manifest's MAdds for every sub-network of an export directory.

    Ratios are to the largest resolution of the export.
    """
    from rsvision.onnx_export import read_manifest, require, subnet_file

    check_threads(threads)
    require("onnxruntime")
    manifest = read_manifest(export_dir)
    channels = int(manifest["input"].get("channels", 3))
    rows = []
    for entry in manifest["subnets"]:
        r = int(entry["resolution"])
        path = subnet_file(export_dir, entry)
        example = torch.zeros(1, channels, r, r)
        rows.append({**{k: entry[k] for k in ("id", "resolution", "madds") if k in entry}, "latency_ms": onnx_ms(path, example, threads, repeats, warmup)})
    largest = max(rows, key=lambda row: row["resolution"])
    for row in rows:
        row["madds_ratio"] = row["madds"] / largest["madds"] if largest.get("madds") else None
        row["latency_ratio"] = row["latency_ms"] / largest["latency_ms"]
    return {
        "export": str(export_dir),
        "task": manifest.get("task"),
        "backend": "onnxruntime (CPU)",
        "threads": threads or os.cpu_count(),
        "batch": 1,
        "rows": rows,
    }
