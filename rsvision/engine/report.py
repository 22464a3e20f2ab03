"""What users see: the per-sub-network results table and the training progress bar."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from rsvision.profile import human

console = Console(stderr=True)

#: Row keys that describe a sub-network rather than measure it.
DESCRIPTIVE = ("subnet", "resolution", "width", "status", "madds", "alpha", "latency_ms")


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in DESCRIPTIVE and k not in names]
    return names


def row_label(row: dict[str, Any]) -> str:
    """``128x128``, ``0.50x @ 160x160`` or a combined row's name (``ensemble``)."""
    if "resolution" not in row:
        return str(row["subnet"])
    size = f"{row['resolution']}x{row['resolution']}"
    return f"{row['width']:.2f}x @ {size}" if row.get("width") is not None else size


def results_table(rows: list[dict[str, Any]], title: str = "Results per sub-network") -> Table:
    """Rows hold ``subnet``/``resolution`` (or a combined row's name), metrics, and optionally
    ``madds``, ``latency_ms``, ``alpha`` and ``status`` (trained, calibrated, interpolated, nearest)."""
    table = Table(title=title)
    table.add_column("resolution" if not any("width" in r for r in rows) else "sub-network", justify="right")
    optional = [
        ("madds", "MAdds", lambda v: human(v)),
        ("latency_ms", "ms", lambda v: f"{v:.2f}"),
    ]
    shown = [(k, title_, fmt) for k, title_, fmt in optional if any(k in r for r in rows)]
    for _, title_, _ in shown:
        table.add_column(title_, justify="right")
    names = metric_names(rows)
    for name in names:
        table.add_column(name, justify="right")
    show_alpha = any("alpha" in r for r in rows)
    if show_alpha:
        table.add_column("alpha", justify="right")
    show_status = any(r.get("status") not in (None, "trained") for r in rows)
    if show_status:
        table.add_column("BN", justify="left")
    for row in rows:
        cells = [row_label(row)]
        cells += [fmt(row[k]) if k in row else "" for k, _, fmt in shown]
        cells += [f"{row[m]:.2f}" if isinstance(row.get(m), (int, float)) else "" for m in names]
        if show_alpha:
            cells.append(f"{row['alpha']:.3f}" if "alpha" in row else "")
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
