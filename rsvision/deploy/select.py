"""Choose the sub-network to deploy under a cost budget, and export it.

Candidates are a run's sub-networks: the trained ones, with ``calibrated`` also those
with calibrated BN statistics stored in the run, and any extra resolutions (served through
interpolated BN, §4.3). Sub-networks without BN statistics of their own (post-hoc BN of a
width run) get them recomputed first, as ``rsvision eval`` does, so no candidate is scored
or exported with the training-time shared statistics. Each gets its validation score (the
task's primary metric, e.g. top-1 or mIoU, from :func:`rsvision.engine.evaluate`, on ``device`` in the
precision :mod:`rsvision.analysis.device` picks there), its multiply-adds and its latency
at batch 1 on this machine's CPU, where the exported graph runs (onnxruntime on the exported graph when onnxruntime is
installed, else the BN-folded PyTorch network that ``rsvision.load(run).at(r)`` gives). The best score within the budget wins
(ties: the cheaper one) and its ONNX graph and manifest are written to the output directory,
under the export's output folder rule (:mod:`rsvision.deploy.export`: checked before any work,
written whole or not at all, an earlier export replaced only with ``overwrite``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import send_to_device

from rsvision.analysis.calibrate import calibrate_missing
from rsvision.analysis.device import AUTO, inference_precision, resolve_device, to_device
from rsvision.analysis.latency import network_ms
from rsvision.deploy.budget import Budget, best_within
from rsvision.deploy.export import (
    check_output_dir,
    copy_export,
    export_artifact,
    resolve_subnets,
)
from rsvision.deploy.network import plain_subnet
from rsvision.deploy.onnx import has_onnxruntime, onnx_ms, require
from rsvision.engine.evaluate import evaluate
from rsvision.errors import UserError
from rsvision.nn.bn_stats import calibrated_subnets
from rsvision.nn.cost import subnet_madds
from rsvision.nn.switchable import trained_subnets
from rsvision.run.folder import load_artifact
from rsvision.subnet import SubNet, subnets_of


def candidates(model, source: str, calibrated: bool, extra: Sequence[int]) -> list[SubNet]:
    """The trained sub-networks, the calibrated ones if asked, and ``extra`` resolutions (checked)."""
    found = list(trained_subnets(model))
    if not found:
        raise UserError(f"{source}: the model has no switchable sub-networks")
    if calibrated:
        stored = calibrated_subnets(model)
        if not stored:
            raise UserError(f"{source}: --calibrated, but the run stores no calibrated sub-networks (`rsvision calibrate {source} --res ...` adds some)")
        found += stored
    found += resolve_subnets(model, list(extra), source) if extra else []
    return subnets_of(found)


def deploy(
    run: str | Path,
    budget: Budget,
    *,
    calibrated: bool = False,
    extra: Sequence[int] = (),
    out_dir: str | Path = "deployed",
    threads: int | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = AUTO,
) -> dict[str, Any]:
    """Score (on ``device``), cost and time every candidate of ``run``; export the best one within ``budget`` to ``out_dir``.

    Returns the report: the budget, the metric, the latency backend, every candidate
    (ranked by score, each with ``within_budget``), the chosen one with its manifest and the
    sub-networks whose BN statistics were recomputed (``calibrated``). Raises
    :class:`UserError` naming the cheapest candidate when none fits the budget.
    """
    require("onnx", "onnxscript")
    check_output_dir(Path(out_dir), overwrite)
    device = resolve_device(device)
    artifact = to_device(load_artifact(run), device)
    task, model = artifact.task, artifact.model
    source = str(artifact.path)
    subnets = candidates(model, source, calibrated, extra)
    if budget.kind == "madds":
        costs = {s.id: subnet_madds(model, s, send_to_device(task.example_input(s.resolution), device)) for s in subnets}
        if min(costs.values()) > budget.limit:
            cheapest = min(costs, key=costs.get)
            raise UserError(f"{source}: no sub-network within {budget.text()}; the cheapest, {cheapest}, needs {budget.text(costs[cheapest])}")
    recomputed, _ = calibrate_missing(artifact, subnets)
    metric = task.primary_metric
    backend = "onnxruntime" if has_onnxruntime() else "pytorch (BN-folded)"
    with tempfile.TemporaryDirectory(prefix="rsvision-deploy-") as tmp:
        manifest = export_artifact(artifact, tmp, subnets)
        rows = _candidate_rows(artifact, subnets, manifest, Path(tmp), backend, threads, batch_size)
        for row in rows:
            row["within_budget"] = row[budget.field] <= budget.limit
        rows.sort(key=lambda r: (-r[metric], r[budget.field]))
        best = best_within(rows, budget, metric)
        if best is None:
            cheapest = min(rows, key=lambda r: r[budget.field])
            raise UserError(f"{source}: no sub-network within {budget.text()}; the cheapest, {cheapest['subnet']}, needs {budget.text(cheapest[budget.field])}")
        choice = {"budget": {"kind": budget.kind, "limit": budget.limit}, "metric": metric, "latency": f"{backend}, batch 1", "candidates": rows}
        chosen_manifest = copy_export(Path(tmp), manifest, [best["subnet"]], out_dir, {"deploy": choice}, overwrite)
    return {
        "run": source,
        "budget": {"kind": budget.kind, "limit": budget.limit},
        "metric": metric,
        "latency_backend": backend,
        "candidates": rows,
        "chosen": best,
        "calibrated": [s.id for s in recomputed],
        "out_dir": str(out_dir),
        "manifest": chosen_manifest,
    }


def _candidate_rows(artifact, subnets: Sequence[SubNet], manifest: dict[str, Any], export_dir: Path, backend: str, threads: int | None, batch_size: int | None) -> list[dict[str, Any]]:
    """One row per exported candidate: its score on the validation data, MAdds, BN status and
    latency at batch 1 on the CPU (onnxruntime on its graph, or the BN-folded PyTorch network)."""
    task, model, metric = artifact.task, artifact.model, artifact.task.primary_metric
    with inference_precision(task.recipe, model):
        scores = {row["subnet"]: row for row in evaluate(model, task, subnets, batch_size=batch_size)}
    rows = []
    for subnet, entry in zip(subnets, manifest["subnets"]):
        example = task.example_input(subnet.resolution)
        if backend == "onnxruntime":
            latency = onnx_ms(export_dir / entry["file"], example, threads)
        else:
            latency = network_ms(plain_subnet(model, subnet, channels_last=True).network.cpu(), example, threads)
        rows.append({
            "subnet": subnet.id, "resolution": subnet.resolution, **({"width": subnet.width} if subnet.width is not None else {}),
            "status": entry["bn_status"], metric: scores[subnet.id][metric], "madds": entry["madds"], "latency_ms": latency,
        })
    return rows
