"""What users see: the per-resolution results table and the training progress bar."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from rsvision.profile import human

console = Console(stderr=True)


def results_table(rows: list[dict[str, Any]], metric_names: list[str], title: str = "Results per resolution") -> Table:
    """Rows hold ``resolution`` (an int or 'ensemble'), metrics, and optionally ``madds``/``alpha``."""
    table = Table(title=title)
    table.add_column("resolution", justify="right")
    show_madds = any("madds" in r for r in rows)
    show_alpha = any("alpha" in r for r in rows)
    if show_madds:
        table.add_column("MAdds", justify="right")
    for name in metric_names:
        table.add_column(name, justify="right")
    if show_alpha:
        table.add_column("alpha", justify="right")
    for row in rows:
        res = row["resolution"]
        cells = [f"{res}x{res}" if isinstance(res, int) else str(res)]
        if show_madds:
            cells.append(human(row["madds"]) if "madds" in row else "")
        cells += [f"{row[m]:.2f}" if m in row else "" for m in metric_names]
        if show_alpha:
            cells.append(f"{row['alpha']:.3f}" if "alpha" in row else "")
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


def step_stats(loss: float, per_res: dict[int, tuple[float, float]]) -> str:
    """'loss 3.21 | 32: 1.10 45% | 24: ...' — per-resolution CE and training accuracy."""
    parts = [f"loss {loss:.3f}"] + [f"{r}: {ce:.2f} {acc:.0f}%" for r, (ce, acc) in per_res.items()]
    return " | ".join(parts)
