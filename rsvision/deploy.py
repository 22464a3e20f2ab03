"""Choose the sub-network to deploy under a cost budget, and export it.

Candidates are a run's sub-networks: the trained ones, with ``calibrated`` also those
with calibrated BN statistics stored in the run, and any extra resolutions (served through
interpolated BN, §4.3). Sub-networks without BN statistics of their own (post-hoc BN of a
width run) get them recomputed first, as ``rsvision eval`` does, so no candidate is scored
or exported with the training-time shared statistics. Each gets its validation score (the
task's primary metric, e.g. top-1 or mIoU, from :func:`rsvision.engine.evaluate`), its multiply-adds and its latency
at batch 1 on this machine (onnxruntime on the exported graph when onnxruntime is
installed, else the BN-folded PyTorch network that ``rsvision.load(run).at(r)`` gives). The best score within the budget wins
(ties: the cheaper one) and its ONNX graph and manifest are written to the output directory,
under the export's output folder rule (:mod:`rsvision.onnx_export`: checked before any work,
written whole or not at all, an earlier export replaced only with ``overwrite``).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rsvision.errors import UserError
from rsvision.subnet import SubNet

_MADDS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_madds(text: str) -> int:
    """``600M``, ``1.2G``, ``150000000`` (K, M, G: 10^3, 10^6, 10^9) as a positive integer."""
    match = _MADDS.match(str(text))
    if not match:
        raise UserError(f"--budget-madds: expected a number of multiply-adds such as 600M, 1.2G or 150000000, got '{text}'")
    value = int(round(float(match.group(1)) * _SCALE[match.group(2).lower()]))
    if value <= 0:
        raise UserError(f"--budget-madds: must be positive, got '{text}'")
    return value


def parse_ms(text: str) -> float:
    """``5`` or ``2.5`` (milliseconds, optionally suffixed ``ms``) as a positive float."""
    cleaned = str(text).strip().removesuffix("ms").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise UserError(f"--budget-ms: expected milliseconds such as 5 or 2.5, got '{text}'") from None
    if not value > 0 or value == float("inf"):
        raise UserError(f"--budget-ms: must be a positive number of milliseconds, got '{text}'")
    return value


@dataclass(frozen=True)
class Budget:
    """A cost limit: ``madds`` (multiply-adds) or ``ms`` (latency at batch 1)."""

    kind: str
    limit: float

    @classmethod
    def parse(cls, madds: str | None, ms: str | None) -> "Budget":
        if (madds is None) == (ms is None):
            raise UserError("deploy: give exactly one of --budget-madds (e.g. 600M) or --budget-ms (e.g. 5)")
        return cls("madds", parse_madds(madds)) if madds is not None else cls("ms", parse_ms(ms))

    @property
    def field(self) -> str:
        return "madds" if self.kind == "madds" else "latency_ms"

    def text(self, value: float | None = None) -> str:
        from rsvision.profile import human

        value = self.limit if value is None else value
        return f"{human(value)} MAdds" if self.kind == "madds" else f"{value:.3g} ms"


def candidates(model, source: str, calibrated: bool, extra: Sequence[int]) -> list[SubNet]:
    """The trained sub-networks, the calibrated ones if asked, and ``extra`` resolutions (checked)."""
    from rsvision.calibrate import calibrated_subnets
    from rsvision.onnx_export import resolve_subnets
    from rsvision.subnet import subnets_of
    from rsvision.switchable import trained_subnets

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


def _madds(model, task, subnet: SubNet) -> int:
    from rsvision.profile import count_madds
    from rsvision.switchable import at_subnet

    with at_subnet(model, subnet):
        return count_madds(model, task.example_input(subnet.resolution))


def choose(rows: list[dict[str, Any]], budget: Budget, metric: str) -> dict[str, Any] | None:
    """The row with the best ``metric`` among those within ``budget`` (ties: the cheaper); None if none is."""
    within = [r for r in rows if r[budget.field] <= budget.limit]
    if not within:
        return None
    return max(within, key=lambda r: (r[metric], -r[budget.field], r["resolution"]))


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
) -> dict[str, Any]:
    """Score, cost and time every candidate of ``run``; export the best one within ``budget`` to ``out_dir``.

    Returns the report: the budget, the metric, the latency backend, every candidate
    (ranked by score, each with ``within_budget``), the chosen one with its manifest and the
    sub-networks whose BN statistics were recomputed (``calibrated``). Raises
    :class:`UserError` naming the cheapest candidate when none fits the budget.
    """
    from rsvision.artifacts import load_artifact
    from rsvision.engine.evaluate import evaluate
    from rsvision.fold import plain_subnet
    from rsvision.latency import network_ms, onnx_ms
    from rsvision.onnx_export import check_output_dir, copy_export, export_artifact, has_onnxruntime, require
    from rsvision.query import calibrate_missing

    require("onnx", "onnxscript")
    check_output_dir(Path(out_dir), overwrite)
    artifact = load_artifact(run)
    task, model = artifact.task, artifact.model
    source = str(artifact.path)
    subnets = candidates(model, source, calibrated, extra)
    if budget.kind == "madds":
        costs = {s.id: _madds(model, task, s) for s in subnets}
        if min(costs.values()) > budget.limit:
            cheapest = min(costs, key=costs.get)
            raise UserError(f"{source}: no sub-network within {budget.text()}; the cheapest, {cheapest}, needs {budget.text(costs[cheapest])}")
    recomputed, _ = calibrate_missing(artifact, subnets)
    metric = task.primary_metric
    scores = {row["subnet"]: row for row in evaluate(model, task, subnets, batch_size=batch_size)}
    backend = "onnxruntime" if has_onnxruntime() else "pytorch (BN-folded)"
    with tempfile.TemporaryDirectory(prefix="rsvision-deploy-") as tmp:
        manifest = export_artifact(artifact, tmp, subnets)
        rows = []
        for subnet, entry in zip(subnets, manifest["subnets"]):
            example = task.example_input(subnet.resolution)
            if backend == "onnxruntime":
                latency = onnx_ms(Path(tmp) / entry["file"], example, threads)
            else:
                latency = network_ms(plain_subnet(model, subnet, channels_last=True).network, example, threads)
            rows.append({
                "subnet": subnet.id, "resolution": subnet.resolution, **({"width": subnet.width} if subnet.width is not None else {}),
                "status": entry["bn_status"], metric: scores[subnet.id][metric], "madds": entry["madds"], "latency_ms": latency,
            })
        for row in rows:
            row["within_budget"] = row[budget.field] <= budget.limit
        rows.sort(key=lambda r: (-r[metric], r[budget.field]))
        best = choose(rows, budget, metric)
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
