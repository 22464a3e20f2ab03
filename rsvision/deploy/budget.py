"""Budgets: a cost limit in MAdds or milliseconds, and the rule that picks a sub-network within it.

One parser per unit and one choice rule (:func:`best_within`) serve ``query`` and ``deploy``:
the most accurate row whose cost fits the limit; ties go to the cheaper row, then to the
larger resolution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from rsvision.errors import UserError
from rsvision.report import human, subnet_label

_MADDS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def _shown(text: str) -> str:
    return str(text).strip() or "''"


def parse_madds(text: str, option: str = "--budget-madds") -> int:
    """``600M``, ``1.2G``, ``150000000`` (K, M, G: 10^3, 10^6, 10^9) as a positive integer."""
    match = _MADDS.match(str(text))
    if not match:
        raise UserError(f"{option} {_shown(text)}: expected a number of multiply-adds such as 600M, 1.2G or 150000000")
    value = int(round(float(match.group(1)) * _SCALE[match.group(2).lower()]))
    if value <= 0:
        raise UserError(f"{option} {_shown(text)}: expected a positive number of multiply-adds")
    return value


def parse_ms(text: str, option: str = "--budget-ms") -> float:
    """``5`` or ``2.5`` (milliseconds, optionally suffixed ``ms``) as a positive float."""
    cleaned = str(text).strip().removesuffix("ms").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise UserError(f"{option} {_shown(text)}: expected a positive number of milliseconds such as 5 or 2.5") from None
    if not value > 0 or value == float("inf"):
        raise UserError(f"{option} {_shown(text)}: expected a positive number of milliseconds such as 5 or 2.5")
    return value


@dataclass(frozen=True)
class Budget:
    """A cost limit: ``madds`` (multiply-adds) or ``ms`` (latency at batch 1)."""

    kind: str
    limit: float

    @classmethod
    def madds(cls, text: str, option: str = "--budget-madds") -> "Budget":
        return cls("madds", parse_madds(text, option))

    @classmethod
    def ms(cls, text: str, option: str = "--budget-ms") -> "Budget":
        return cls("ms", parse_ms(text, option))

    @property
    def field(self) -> str:
        """The row field the limit applies to."""
        return "madds" if self.kind == "madds" else "latency_ms"

    def text(self, value: float | None = None) -> str:
        value = self.limit if value is None else value
        return f"{human(value)} MAdds" if self.kind == "madds" else f"{value:.3g} ms"


def best_within(rows: Sequence[dict[str, Any]], budget: Budget, metric: str) -> dict[str, Any] | None:
    """The row with the best ``metric`` among those within ``budget`` (ties: the cheaper, then
    the larger resolution); None when none is."""
    within = [r for r in rows if r[budget.field] <= budget.limit]
    if not within:
        return None
    return max(within, key=lambda r: (r[metric], -r[budget.field], r["resolution"]))


def require_within(rows: Sequence[dict[str, Any]], budget: Budget, metric: str, what: str = "configuration") -> dict[str, Any]:
    """:func:`best_within`, or a :class:`UserError` naming the cheapest row when nothing fits."""
    best = best_within(rows, budget, metric)
    if best is None:
        cheapest = min(rows, key=lambda r: r[budget.field])
        raise UserError(
            f"no {what} fits {budget.text()} (the cheapest, {subnet_label(cheapest)}, needs {budget.text(cheapest[budget.field])})"
        )
    return best
