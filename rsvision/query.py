"""The query table of a width-switchable run (MutualNet §3.2 "Model Inference").

Every (width, resolution) of a grid (widths every 0.05 over the run's range, as the paper,
or the run's list of widths; the run's resolutions) gets its multiply-adds, its latency
(measured on this machine, batch 1, on the plain network :func:`rsvision.switchable.materialize`
gives) and its validation accuracy, after recomputing the BN statistics of sub-networks
that have none of their own (post-hoc BN, ``rsvision.calibrate``; stored in the run's
calibration file). The best configuration under a budget is the most accurate one that
fits it.

The table is cached in the run folder (``query.json``, written atomically) under a key of
the weights and the grid, so a second query is instant; latencies measured on another
machine are measured again.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console
from rich.table import Table

from rsvision.artifacts import CALIBRATION, WEIGHTS, load_artifact, read_meta, write_json
from rsvision.calibrate import DEFAULT_IMAGES, calibrate, save_calibration
from rsvision.engine.evaluate import evaluate
from rsvision.errors import UserError
from rsvision.profile import count_madds, cpu_latency_ms, human
from rsvision.recipe import WidthsConfig
from rsvision.subnet import SubNet
from rsvision.switchable import at_subnet, materialize, switchable_bns
from rsvision.training import method_for

QUERY = "query.json"
FORMAT = "rsvision-query"
GRID_STEP = 0.05
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}


def parse_budget(text: str, option: str = "--budget") -> float:
    """``150M`` → 1.5e8, ``1.2G``, ``300000``; a bad value is a UserError naming ``option``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"{option} {text}: expected a positive number with an optional K, M or G (e.g. 150M)")
    return float(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_ms(text: str, option: str = "--budget-ms") -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise UserError(f"{option} {text}: expected a positive number of milliseconds (e.g. 5)")
    return value


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


def calibrate_missing(artifact, subnets: Sequence[SubNet], images: int | None = None, progress=None) -> tuple[list[SubNet], int]:
    """Recompute the BN statistics of the ``subnets`` that have none of their own (the training
    method says which: post-hoc BN); saved to the run's calibration file when ``artifact``
    is a run folder. Returns them and the number of images used."""
    task, model = artifact.task, artifact.model
    method = method_for(task.recipe)(model, task, task.recipe)
    missing = method.uncalibrated(list(subnets))
    if not missing:
        return [], 0
    used = calibrate(model, task, missing, images or DEFAULT_IMAGES, seed=task.recipe.train.seed, progress=progress)
    run = Path(artifact.path)
    if run.is_dir():
        save_calibration(model, run / CALIBRATION, run / WEIGHTS)
    return missing, used


def _machine() -> dict[str, Any]:
    return {"host": platform.node(), "processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


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
) -> dict[str, Any]:
    """The query table of a run folder (cached in ``query.json``; see the module docstring).

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
    widths = WidthsConfig.model_validate(recipe_widths)
    grid_widths = width_grid(widths, step)
    resolutions = sorted(meta["resolutions"], reverse=True)
    images = images or DEFAULT_IMAGES
    key = {"weights": _weights_stamp(run_dir), "widths": grid_widths, "resolutions": resolutions, "images": images, "data_root": data_root}
    cache_path = run_dir / QUERY
    cached = _read_cache(cache_path)
    machine = _machine()
    if not refresh and cached is not None and cached.get("key") == key:
        if cached.get("machine") == machine:
            return {**cached["report"], "cached": True}
        report = cached["report"]
        artifact = load_artifact(run_dir, data_root)
        _measure_latency(artifact, report["rows"])
        report |= {"machine": machine, "cached": True}
        write_json(cache_path, {"format": FORMAT, "key": key, "machine": machine, "report": report})
        return report
    artifact = load_artifact(run_dir, data_root)
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
    return report


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
    rows = evaluate(model, task, subnets, progress=progress)
    for row, s in zip(rows, subnets):
        with at_subnet(model, s):
            row["madds"] = count_madds(model, task.example_input(s.resolution))
    return rows


def _measure_latency(artifact, rows: list[dict[str, Any]]) -> None:
    """Median CPU latency (ms, batch 1) of each row's plain materialized network."""
    task, model = artifact.task, artifact.model
    for row in rows:
        plain = materialize(model, row["subnet"])
        row["latency_ms"] = round(cpu_latency_ms(plain, task.example_input(row["resolution"])), 4)


def pareto(rows: list[dict[str, Any]], metric: str, cost: str = "madds") -> list[dict[str, Any]]:
    """Rows no cheaper row matches: sorted by ``cost``, each more accurate than all cheaper ones."""
    out, best = [], float("-inf")
    for row in sorted(rows, key=lambda r: (r[cost], -r[metric])):
        if row[metric] > best:
            out.append(row)
            best = row[metric]
    return out


def best_under(rows: list[dict[str, Any]], metric: str, budget: float, cost: str = "madds", option: str = "--budget") -> dict[str, Any]:
    """The most accurate row whose ``cost`` fits ``budget`` (ties: the cheaper); none fits: UserError."""
    fitting = [r for r in rows if r[cost] <= budget]
    if not fitting:
        cheapest = min(rows, key=lambda r: r[cost])
        unit = "MAdds" if cost == "madds" else "ms"
        raise UserError(f"{option}: no configuration fits {_fmt_cost(budget, cost)} (the cheapest, {_label(cheapest)}, needs {_fmt_cost(cheapest[cost], cost)} {unit})")
    return max(fitting, key=lambda r: (r[metric], -r[cost]))


def choices(report: dict[str, Any], budgets: Sequence[float] = (), budgets_ms: Sequence[float] = ()) -> list[dict[str, Any]]:
    """The best configuration per budget: ``{"budget", "kind", "choice"}`` (MAdds first, then ms)."""
    rows, metric = report["rows"], report["metric"]
    out = [{"budget": b, "kind": "madds", "choice": best_under(rows, metric, b, "madds", "--budget")} for b in budgets]
    out += [{"budget": b, "kind": "latency_ms", "choice": best_under(rows, metric, b, "latency_ms", "--budget-ms")} for b in budgets_ms]
    return out


def _fmt_cost(value: float, cost: str) -> str:
    return human(value) if cost == "madds" else f"{value:.2f}"


def _label(row: dict[str, Any]) -> str:
    return f"{row['width']:.2f}x @ {row['resolution']}"


def query_table(report: dict[str, Any], picked: Sequence[dict[str, Any]] = ()):
    """The query table as a rich Table: every grid point by MAdds, Pareto-optimal rows marked."""
    metric, rows = report["metric"], report["rows"]
    front = {r["subnet"] for r in pareto(rows, metric)}
    chosen = {c["choice"]["subnet"] for c in picked}
    title = f"query table: {report['run']} ({len(rows)} configurations; * best {metric} for its MAdds)"
    table = Table(title=title)
    for name, justify in (("width", "right"), ("resolution", "right"), ("MAdds", "right"), ("ms", "right"), (metric, "right"), ("BN", "left"), ("", "left")):
        table.add_column(name, justify=justify)
    for row in sorted(rows, key=lambda r: (r["madds"], -r["width"])):
        mark = ("*" if row["subnet"] in front else "") + (" <" if row["subnet"] in chosen else "")
        table.add_row(f"{row['width']:.2f}", str(row["resolution"]), human(row["madds"]), f"{row['latency_ms']:.2f}", f"{row[metric]:.2f}", row.get("status", ""), mark)
    return table


def print_query(report: dict[str, Any], picked: Sequence[dict[str, Any]] = (), console=None) -> None:
    """The table, then one line per budget."""
    if console is None:
        console = Console()
    if not report.get("complete", True):
        console.print(f"[yellow]warning:[/] {report['run']} did not finish training")
    console.print(query_table(report, picked))
    metric = report["metric"]
    if report.get("cached"):
        console.print(f"read from {report['run']}/{QUERY} (the table of these weights)")
    if report.get("calibrated"):
        console.print(f"BN statistics of {len(report['calibrated'])} sub-networks recomputed on {report['images']} training images (post-hoc BN)")
    for c in picked:
        row, unit = c["choice"], "MAdds" if c["kind"] == "madds" else "ms"
        console.print(
            f"budget {_fmt_cost(c['budget'], c['kind'])} {unit}: {_label(row)} ({metric} {row[metric]:.2f}, "
            f"{_fmt_cost(row['madds'], 'madds')} MAdds, {row['latency_ms']:.2f} ms)"
        )

