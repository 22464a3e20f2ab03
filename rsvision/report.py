"""What users see: every table (results per sub-network, the query table), the training
progress bar, and numbers written as the paper writes them (``1.82G`` MAdds)."""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from rsvision.subnet import SubNet

console = Console(stderr=True)

#: Row keys that describe a sub-network rather than measure it.
DESCRIPTIVE = ("subnet", "resolution", "width", "status", "madds", "latency_ms")


def metric_names(rows: list[dict[str, Any]], columns: dict[str, str] | None = None) -> list[str]:
    """The metric keys of ``rows``: every key that neither describes a sub-network nor is a method column."""
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in DESCRIPTIVE and k not in (columns or {}) and k not in names]
    return names


def subnet_label(row: dict[str, Any]) -> str:
    """``128x128``, ``0.50x @ 160x160`` (:meth:`SubNet.label`) or a combined row's name (``ensemble``)."""
    if "resolution" not in row:
        return str(row["subnet"])
    return SubNet(row["resolution"], row.get("width")).label()


def results_table(rows: list[dict[str, Any]], title: str = "Results per sub-network", columns: dict[str, str] | None = None) -> Table:
    """Rows hold ``subnet``/``resolution`` (or a combined row's name), metrics, and optionally
    ``madds``, ``latency_ms`` and ``status`` (trained, calibrated, interpolated, nearest).
    ``columns`` (key → format) are the training method's own columns, shown after the metrics
    (:attr:`rsvision.training.TrainingMethod.columns`, e.g. MRED's ``alpha``)."""
    table = Table(title=title)
    table.add_column("resolution" if not any("width" in r for r in rows) else "sub-network", justify="right")
    optional = [
        ("madds", "MAdds", lambda v: human(v)),
        ("latency_ms", "ms", lambda v: f"{v:.2f}"),
    ]
    shown = [(k, title_, fmt) for k, title_, fmt in optional if any(k in r for r in rows)]
    for _, title_, _ in shown:
        table.add_column(title_, justify="right")
    names = metric_names(rows, columns)
    for name in names:
        table.add_column(name, justify="right")
    extra = [(k, fmt) for k, fmt in (columns or {}).items() if any(k in r for r in rows)]
    for key, _ in extra:
        table.add_column(key, justify="right")
    show_status = any(r.get("status") not in (None, "trained") for r in rows)
    if show_status:
        table.add_column("BN", justify="left")
    for row in rows:
        cells = [subnet_label(row)]
        cells += [fmt(row[k]) if k in row else "" for k, _, fmt in shown]
        cells += [f"{row[m]:.2f}" if isinstance(row.get(m), (int, float)) else "" for m in names]
        cells += [format(row[k], fmt) if k in row else "" for k, fmt in extra]
        if show_status:
            cells.append(row.get("status", ""))
        table.add_row(*cells)
    return table


def training_progress(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console,
        disable=disable,
        transient=False,
    )


def human(n: float) -> str:
    """1.82G, 931M, 11.18M style numbers, as in the paper's tables."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.2f}{unit}" if value < 10 else f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(int(n))


def query_table(report: dict[str, Any], picked: Sequence[dict[str, Any]] = ()) -> Table:
    """The query table (:func:`rsvision.analysis.query.query_run`): every grid point by MAdds,
    Pareto-optimal rows (``pareto``) marked ``*``, the rows ``picked`` for a budget ``<``."""
    metric, rows = report["metric"], report["rows"]
    chosen = {c["choice"]["subnet"] for c in picked}
    title = f"query table: {report['run']} ({len(rows)} configurations; * best {metric} for its MAdds)"
    table = Table(title=title)
    for name, justify in (("width", "right"), ("resolution", "right"), ("MAdds", "right"), ("ms", "right"), (metric, "right"), ("BN", "left"), ("", "left")):
        table.add_column(name, justify=justify)
    for row in sorted(rows, key=lambda r: (r["madds"], -r["width"])):
        mark = ("*" if row.get("pareto") else "") + (" <" if row["subnet"] in chosen else "")
        table.add_row(f"{row['width']:.2f}", str(row["resolution"]), human(row["madds"]), f"{row['latency_ms']:.2f}", f"{row[metric]:.2f}", row.get("status", ""), mark)
    return table


def print_query(report: dict[str, Any], picked: Sequence[dict[str, Any]] = (), console=None) -> None:
    """The table, then one line per budget: ``picked`` holds ``{"budget": Budget, "choice": row}``."""
    if console is None:
        console = Console()
    if not report.get("complete", True):
        console.print(f"[yellow]warning:[/] {report['run']} did not finish training")
    console.print(query_table(report, picked))
    metric = report["metric"]
    if report.get("cached"):
        console.print(f"read from {report['file']} (the table of these weights)")
    if report.get("calibrated"):
        console.print(f"BN statistics of {len(report['calibrated'])} sub-networks recomputed on {report['images']} training images (post-hoc BN)")
    for c in picked:
        row = c["choice"]
        console.print(
            f"budget {c['budget'].text()}: {subnet_label(row)} ({metric} {row[metric]:.2f}, "
            f"{human(row['madds'])} MAdds, {row['latency_ms']:.2f} ms)"
        )

