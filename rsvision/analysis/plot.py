"""Accuracy against cost and against resolution, as RS-Nets Fig. 1 and Fig. 4 (right); and a
run's training curves (``--curves``: loss and accuracy per sub-network over the epochs, from
its ``log.jsonl``).

One curve per run, evaluated at the resolutions asked for (default: its trained and
calibrated ones); a single-resolution run evaluated at many resolutions is the paper's
I-max. A group of single-resolution runs (I-Nets) makes one curve, each run at its own
resolution. Every point is marked by how its BatchNorm was served: trained, interpolated
(§4.3), calibrated (``rsvision calibrate``) or nearest (outside the trained range).
Evaluations come from the run folders' ``evaluations.json`` where ``eval`` or an earlier
plot measured them (:mod:`rsvision.run.evaluations`); only the others are computed, on
``device`` (:mod:`rsvision.analysis.device`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from rsvision.analysis.device import AUTO, resolve_device, to_device
from rsvision.analysis.evaluate import cached_evaluation
from rsvision.errors import UserError
from rsvision.io import atomic_write
from rsvision.nn.bn_stats import calibrated_subnets
from rsvision.run.files import LOG, META
from rsvision.run.folder import Artifact, load_artifact
from rsvision.subnet import SubNet, check_scale

#: How each BN status is drawn: matplotlib marker and whether it is filled.
MARKERS = {"trained": ("o", True), "interpolated": ("o", False), "calibrated": ("D", True), "nearest": ("x", True)}
FORMATS = {".png": "png", ".svg": "svg"}


@dataclass(frozen=True)
class Point:
    run: str
    subnet: str
    resolution: int
    madds: int
    value: float
    status: str


@dataclass
class Curve:
    label: str
    points: list[Point] = field(default_factory=list)


@dataclass
class PlotData:
    """What the figure shows: the metric (the task's primary one) and the curves."""

    metric: str
    curves: list[Curve]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _evaluate(artifact: Artifact, subnets: Sequence[SubNet], batch_size: int | None) -> list[Point]:
    with warnings.catch_warnings():  # "nearest" points are marked as such; no warning per resolution
        warnings.filterwarnings("ignore", message="resolution .* is outside the trained range")
        rows = cached_evaluation(artifact, subnets, batch_size)
    metric = artifact.task.primary_metric
    points = [Point(str(artifact.path), r["subnet"], r["resolution"], int(r["madds"]), float(r[metric]), r.get("status", "trained")) for r in rows]
    return sorted(points, key=lambda p: p.resolution)


def _classes(artifact: Artifact) -> list[str]:
    names = artifact.meta.get("class_names")
    return [str(n) for n in names] if names else [str(i) for i in range(artifact.task.recipe.model.num_classes)]


def _same_classes(a: list[str], b: list[str]) -> bool:
    """The same names, or the same number where one run names its classes by index only (a converted checkpoint)."""
    indices = [str(i) for i in range(len(a))]
    return a == b or (len(a) == len(b) and indices in (a, b))


def _describe(classes: list[str]) -> str:
    """``4 classes (cat, dog, fox, ...)``."""
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    return f"{len(classes)} classes ({shown})"


def _default_label(artifact: Artifact) -> str:
    subnets = artifact.subnets
    return f"I-{subnets[0].resolution}" if len(subnets) == 1 else Path(artifact.path).name


def plot_data(
    runs: Sequence[str | Path],
    inets: Sequence[Sequence[str | Path]] = (),
    resolutions: Sequence[int] | None = None,
    labels: Sequence[str] = (),
    data_root: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = AUTO,
) -> PlotData:
    """The curves of ``runs`` (at ``resolutions``, default their trained and calibrated ones),
    then one per group of single-resolution runs in ``inets``; ``labels`` name them in that order.
    Every run must measure the same metric on the same classes; what is not kept is evaluated on ``device``."""
    if not runs and not inets:
        raise UserError("plot: give at least one run (or --inets RUN,RUN,...)")
    if len(labels) > len(runs) + len(inets):
        raise UserError(f"--label: more labels ({len(labels)}) than curves ({len(runs) + len(inets)})")
    # Everything is loaded and checked before the first evaluation.
    device = resolve_device(device)
    singles = [to_device(load_artifact(path, data_root), device) for path in runs]
    groups = [[to_device(load_artifact(path, data_root), device) for path in group] for group in inets]
    first = (singles or groups[0])[0]
    metric = first.task.primary_metric
    for artifact in singles + [a for g in groups for a in g]:
        if artifact.task.primary_metric != metric:
            raise UserError(f"{artifact.path}: its task measures {artifact.task.primary_metric}, another run {metric}; plot runs of one task")
        if not _same_classes(_classes(artifact), _classes(first)):
            raise UserError(
                f"{artifact.path}: predicts {_describe(_classes(artifact))}, but {first.path} predicts {_describe(_classes(first))}; "
                "plot runs of one class set"
            )
    for artifact in singles if resolutions else ():
        check_scale(resolutions, artifact.model.resolutions, str(artifact.path))
    for group in groups:
        seen: set[int] = set()
        for artifact in group:
            if len(artifact.subnets) != 1:
                raise UserError(f"--inets {artifact.path}: has {len(artifact.subnets)} trained sub-networks; an I-Net is a single-resolution run")
            if artifact.subnets[0].resolution in seen:
                raise UserError(f"--inets {artifact.path}: a second I-Net at resolution {artifact.subnets[0].resolution} in one group")
            seen.add(artifact.subnets[0].resolution)

    curves = []
    for artifact in singles:
        own = sorted(set(artifact.subnets) | set(calibrated_subnets(artifact.model)), key=lambda s: s.resolution)
        wanted = [SubNet(r) for r in resolutions] if resolutions else own
        curves.append(Curve(_default_label(artifact), _evaluate(artifact, wanted, batch_size)))
    for group in groups:
        points = [p for artifact in group for p in _evaluate(artifact, artifact.subnets, batch_size)]
        curves.append(Curve("I-Nets", sorted(points, key=lambda p: p.resolution)))
    for curve, label in zip(curves, labels):
        curve.label = label
    return PlotData(metric, curves)


def output_format(path: str | Path) -> str:
    """``png`` or ``svg`` from the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: the output must end in .png or .svg, not '{suffix or 'no suffix'}'")
    return FORMATS[suffix]


def _madds_tick(value: float, _position=None) -> str:
    """``500K``, ``2.5M``, ``1G``: one unit per tick, no padded decimals."""
    for unit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= unit:
            return f"{value / unit:g}{suffix}"
    return f"{value:g}"


@dataclass
class TrainingCurves:
    """A run's ``log.jsonl`` per sub-network over the epochs: the training loss of each
    sub-network (its ``ce/ID`` or ``loss/ID``, else the run's total as ``all``) and the
    evaluated ``metric`` of each evaluation row."""

    run: str
    metric: str
    loss: dict[str, list[tuple[int, float]]]
    accuracy: dict[str, list[tuple[int, float]]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_curves(run: str | Path) -> TrainingCurves:
    """The curves of ``run``'s training log (no network is loaded)."""
    run = Path(run)
    if not (run / LOG).is_file():
        raise UserError(f"{run}: no {LOG} (not a run folder trained by rsvision train)")
    lines = [json.loads(line) for line in (run / LOG).read_text().splitlines() if line.strip()]
    if not lines:
        raise UserError(f"{run}/{LOG}: empty; no epoch has finished yet")
    meta = json.loads((run / META).read_text()) if (run / META).is_file() else {}
    metric = meta.get("primary_metric", "top1")
    subnets = set(meta.get("subnets", [])) | {row["subnet"] for line in lines for row in line.get("val", [])}
    loss: dict[str, list[tuple[int, float]]] = {}
    accuracy: dict[str, list[tuple[int, float]]] = {}
    for line in lines:
        for key, value in line.items():
            name, _, subnet = key.rpartition("/")
            if name in ("ce", "loss") and subnet in subnets:
                loss.setdefault(subnet, []).append((line["epoch"], float(value)))
        for row in line.get("val", []):
            if metric in row:
                accuracy.setdefault(row["subnet"], []).append((line["epoch"], float(row[metric])))
    if not loss:
        loss["all"] = [(line["epoch"], float(line["loss"])) for line in lines if "loss" in line]
    return TrainingCurves(str(run), metric, loss, accuracy)


def draw_curves(curves: TrainingCurves, path: str | Path) -> Path:
    """Two panels over the epochs, training loss and the evaluated metric, one line per
    sub-network, written as PNG or SVG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = output_format(path)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for ax, series in ((loss_ax, curves.loss), (metric_ax, curves.accuracy)):
        for i, (subnet, points) in enumerate(series.items()):
            ax.plot([e for e, _ in points], [v for _, v in points], color=f"C{i % 10}", lw=1.5, marker="o", ms=3, label=subnet)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if series:
            ax.legend(loc="best", fontsize=8)
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("training loss per sub-network")
    metric_ax.set_ylabel(f"{curves.metric} (%)")
    metric_ax.set_title(f"validation {curves.metric} per sub-network")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    return path


def draw(data: PlotData, path: str | Path) -> Path:
    """Two panels, accuracy vs MAdds and accuracy vs resolution, written as PNG or SVG (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    fmt = output_format(path)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    cost, res = fig.subplots(1, 2, sharey=True)
    colors = [f"C{i % 10}" for i in range(len(data.curves))]
    for curve, color in zip(data.curves, colors):
        for ax, x in ((cost, "madds"), (res, "resolution")):
            xs = [getattr(p, x) for p in curve.points]
            ax.plot(xs, [p.value for p in curve.points], color=color, lw=1.5, label=curve.label if ax is cost else None)
            for status, (marker, filled) in MARKERS.items():
                pts = [p for p in curve.points if p.status == status]
                if pts:
                    ax.scatter(
                        [getattr(p, x) for p in pts], [p.value for p in pts], marker=marker, s=36, zorder=3,
                        color=color, facecolors=color if filled else "white", linewidths=1.3,
                    )
    cost.xaxis.set_major_formatter(FuncFormatter(_madds_tick))
    cost.set_xlabel("multiply-adds")
    cost.set_ylabel(f"{data.metric} (%)")
    cost.set_title("accuracy vs. cost")
    res.set_xlabel("input resolution")
    res.set_title("accuracy vs. resolution")
    for ax in (cost, res):
        ax.grid(alpha=0.3)
    cost.legend(loc="best", fontsize=8)
    shown = sorted({p.status for c in data.curves for p in c.points}, key=list(MARKERS).index)
    handles = [
        Line2D([], [], ls="", marker=MARKERS[s][0], color="0.3", markerfacecolor="0.3" if MARKERS[s][1] else "white", label=f"BN {s}")
        for s in shown
    ]
    res.legend(handles=handles, loc="best", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    return path
