"""The query table of a width-switchable run (MutualNet §3.2 "Model Inference").

Every (width, resolution) of a grid (widths every 0.05 over the run's range, as the paper,
or the run's list of widths; the run's resolutions) gets its multiply-adds, its latency
(measured on this machine's ``device``, batch 1, on the plain network
:func:`rsvision.nn.switchable.materialize` gives) and its validation accuracy, after
recomputing the BN statistics of sub-networks that have none of their own (post-hoc BN,
``rsvision.nn.bn_stats``; stored in the run's calibration file). Accuracy and latency are
measured in the precision :mod:`rsvision.analysis.device` picks on that device. The best
configuration under a budget is the most accurate one that fits it.

The table is cached in the run folder (``query.json``, written atomically) under a key of
the weights, the grid and (when not float32) the precision, so a second query is instant;
latencies measured on another machine or device are measured again.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import send_to_device

from rsvision.analysis.calibrate import calibrate_missing
from rsvision.analysis.device import AUTO, autocast_dtype, device_of, inference_precision, resolve_device, to_device
from rsvision.analysis.latency import network_ms
from rsvision.engine.evaluate import evaluate
from rsvision.errors import UserError
from rsvision.io import write_json
from rsvision.nn.bn_stats import DEFAULT_IMAGES
from rsvision.nn.cost import subnet_madds
from rsvision.nn.switchable import materialize, switchable_bns
from rsvision.recipe import WidthsConfig
from rsvision.run.files import QUERY, WEIGHTS
from rsvision.run.folder import load_artifact, read_meta
from rsvision.subnet import SubNet

FORMAT = "rsvision-query"
GRID_STEP = 0.05
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


def widths_of(artifact) -> WidthsConfig:
    """The run's width axis; a run without one is a UserError."""
    widths = artifact.task.recipe.widths
    if widths is None:
        raise UserError(f"{artifact.path}: this run has no width axis (its recipe has no widths section)")
    return widths


def width_grid(widths: WidthsConfig, step: float = GRID_STEP) -> list[float]:
    """The query grid's widths, largest first: the list, or the range's ends and every
    multiple of ``step`` between them."""
    if widths.list is not None:
        return list(widths.list)
    low, high = widths.bounds
    k0, k1 = int(low / step + 1e-9) + 1, int(high / step - 1e-9)
    inner = [round(k * step, 4) for k in range(k0, k1 + 1) if low < round(k * step, 4) < high]
    return sorted({low, high, *inner}, reverse=True)


def check_widths(widths: WidthsConfig, values: Sequence[float], option: str = "--width") -> None:
    """Widths a run can serve: inside its range, or on its list (private BN has no others)."""
    low, high = widths.bounds
    for w in values:
        if widths.list is not None and widths.bn == "private" and not any(abs(w - v) < 1e-9 for v in widths.list):
            raise UserError(f"{option} {w:g}: not one of this run's widths {', '.join(f'{v:g}' for v in widths.list)} (private BN: no statistics for others)")
        if not low - 1e-9 <= w <= high + 1e-9:
            raise UserError(f"{option} {w:g}: outside this run's width range {low:g}..{high:g}")
        if abs(w * 100 - round(w * 100)) > 1e-6:
            raise UserError(f"{option} {w:g}: widths go in steps of 0.01 (they name sub-networks, e.g. 160w35)")


def width_subnets(artifact, resolutions: Sequence[int] | None, widths: Sequence[float] | None) -> list[SubNet]:
    """Sub-networks for ``rsvision eval``: ``--width`` x ``--res``, each defaulting to the
    run's trained ones; ``--width`` on a run without a width axis is a UserError."""
    config = artifact.task.recipe.widths
    if config is None:
        if widths:
            raise UserError(f"--width: {artifact.path} has no width axis (its recipe has no widths section)")
        return [SubNet(r) for r in resolutions or artifact.task.recipe.resolutions]
    if widths:
        check_widths(config, widths)
    widths = list(widths or config.trained)
    resolutions = list(resolutions or artifact.task.recipe.resolutions)
    return [SubNet(r, w) for w in widths for r in resolutions]


def _machine(device: torch.device) -> dict[str, Any]:
    """Where latencies are measured: the host, and the accelerator when not on the CPU."""
    machine = {"host": platform.node(), "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        machine["device"] = f"{device}: {torch.cuda.get_device_name(device)}"
    elif device.type != "cpu":
        machine["device"] = str(device)
    return machine


def _weights_stamp(run_dir: Path) -> str:
    stat = (run_dir / WEIGHTS).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def query_run(
    run_dir: str | Path,
    images: int | None = None,
    step: float = GRID_STEP,
    data_root: str | None = None,
    refresh: bool = False,
    progress=None,
    device: str | torch.device | None = AUTO,
) -> dict[str, Any]:
    """The query table of a run folder on ``device`` (cached in ``query.json``; see the module docstring).

    Returns ``{"run", "metric", "rows", "machine", "cached", "calibrated", "images"}``; each row
    holds ``subnet``, ``width``, ``resolution``, ``madds``, ``latency_ms``, ``status`` and the
    task's metrics.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: query works on a run folder; this is not one")
    meta = read_meta(run_dir)
    recipe_widths = (meta.get("recipe") or {}).get("widths")
    if not recipe_widths:
        raise UserError(f"{run_dir}: this run has no width axis (its recipe has no widths section); query needs a width run")
    device = resolve_device(device)
    widths = WidthsConfig.model_validate(recipe_widths)
    grid_widths = width_grid(widths, step)
    resolutions = sorted(meta["resolutions"], reverse=True)
    images = images or DEFAULT_IMAGES
    key = {"weights": _weights_stamp(run_dir), "widths": grid_widths, "resolutions": resolutions, "images": images, "data_root": data_root}
    mixed = autocast_dtype((meta["recipe"].get("train") or {}).get("mixed_precision"), device)
    if mixed is not None:  # float32 tables keep the key they always had
        key["precision"] = meta["recipe"]["train"]["mixed_precision"]
    cache_path = run_dir / QUERY
    cached = _read_cache(cache_path)
    machine = _machine(device)
    if not refresh and cached is not None and cached.get("key") == key:
        return _from_cache(cached, run_dir, data_root, device)
    artifact = to_device(load_artifact(run_dir, data_root), device)
    subnets = [SubNet(r, w) for w in grid_widths for r in resolutions]
    for bn in switchable_bns(artifact.model):  # a new table recalibrates its whole grid
        for s in subnets:
            if s.id in bn.calibrated:
                del bn.calibrated[s.id]
    calibrated, used = calibrate_missing(artifact, subnets, images, progress)
    rows = _evaluate_grid(artifact, subnets, progress)
    _measure_latency(artifact, rows)
    report = {
        "run": str(run_dir),
        "metric": meta.get("primary_metric") or artifact.task.primary_metric,
        "complete": bool(meta.get("complete", True)),
        "rows": rows,
        "machine": machine,
        "calibrated": [s.id for s in calibrated],
        "images": used,
        "cached": False,
    }
    write_json(cache_path, {"format": FORMAT, "key": key, "machine": machine, "report": report})
    return _with_front({**report, "file": str(cache_path)})


def _from_cache(cached: dict[str, Any], run_dir: Path, data_root: str | None, device: torch.device) -> dict[str, Any]:
    """The kept table; latencies measured on another machine or device are measured again (and kept)."""
    cache_path, machine = run_dir / QUERY, _machine(device)
    report = cached["report"]
    if cached.get("machine") != machine:
        _measure_latency(to_device(load_artifact(run_dir, data_root), device), report["rows"])
        report |= {"machine": machine}
        write_json(cache_path, {"format": FORMAT, "key": cached["key"], "machine": machine, "report": report})
    return _with_front({**report, "cached": True, "file": str(cache_path)})


def _with_front(report: dict[str, Any]) -> dict[str, Any]:
    """The report with each row's ``pareto``: whether no cheaper row matches its metric."""
    front = {r["subnet"] for r in pareto(report["rows"], report["metric"])}
    return {**report, "rows": [{**r, "pareto": r["subnet"] in front} for r in report["rows"]]}


def pareto(rows: list[dict[str, Any]], metric: str, cost: str = "madds") -> list[dict[str, Any]]:
    """Rows no cheaper row matches: sorted by ``cost``, each more accurate than all cheaper ones."""
    out, best = [], float("-inf")
    for row in sorted(rows, key=lambda r: (r[cost], -r[metric])):
        if row[metric] > best:
            out.append(row)
            best = row[metric]
    return out


def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _evaluate_grid(artifact, subnets: list[SubNet], progress) -> list[dict[str, Any]]:
    task, model = artifact.task, artifact.model
    with inference_precision(task.recipe, model):
        rows = evaluate(model, task, subnets, progress=progress)
    for row, s in zip(rows, subnets):
        row["madds"] = subnet_madds(model, s, send_to_device(task.example_input(s.resolution), device_of(model)))
    return rows


def _measure_latency(artifact, rows: list[dict[str, Any]]) -> None:
    """Median latency (ms, batch 1) of each row's plain materialized network, on the model's
    device in the precision evaluation uses there."""
    task, model = artifact.task, artifact.model
    with inference_precision(task.recipe, model):
        for row in rows:
            plain = materialize(model, row["subnet"])
            example = send_to_device(task.example_input(row["resolution"]), device_of(model))
            row["latency_ms"] = round(network_ms(plain, example), 4)


