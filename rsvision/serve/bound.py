"""The fluid bound: the best effective accuracy any scheduler could reach at an offered rate.

Treat requests as a fluid arriving at ``rate`` per second at one worker. A fraction
``x_s`` of them is served by sub-network ``s`` at its cheapest per-request cost
``c_s = lat[s][b*_s] / b*_s`` (``b*_s`` the batch size that minimises it), and a fraction
``x_drop`` is dropped (accuracy 0). The bound is the linear program::

    maximise    sum_s x_s a_s
    subject to  sum_s x_s + x_drop = 1,   x >= 0,
                rate * sum_s x_s c_s <= 1          (the worker busy at most 100 % of the time)

whose optimum is the mean accuracy per offered request (late, dropped or wrong = wrong,
so it bounds the effective accuracy a load generator measures). With a latency objective,
batch sizes whose compute alone exceeds it are left out: no request they hold can be on
time. Accuracies are in whatever unit they are given (percent in rsvision's tables).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rsvision.errors import UserError


@dataclass(frozen=True)
class ServiceCost:
    """A sub-network's cheapest per-request service time: ``ms`` per request at ``batch``."""

    batch: int
    ms: float


@dataclass(frozen=True)
class FluidBound:
    """The optimum of the linear program: its ``accuracy`` (mean per offered request), the
    fraction of requests per sub-network (``mix``; zero shares left out), the ``dropped``
    fraction, the worker's ``utilisation`` and the cost each sub-network was given."""

    rate: float
    accuracy: float
    mix: dict[str, float]
    dropped: float
    utilisation: float
    costs: dict[str, ServiceCost]

    def as_dict(self) -> dict:
        return {
            "rate": self.rate,
            "accuracy": self.accuracy,
            "mix": self.mix,
            "dropped": self.dropped,
            "utilisation": self.utilisation,
            "costs": {s: {"batch": c.batch, "ms_per_request": c.ms} for s, c in self.costs.items()},
        }


def best_batch(latency_ms: Mapping[int, float], slo_ms: float | None = None) -> ServiceCost | None:
    """The batch size with the lowest time per request, ``lat[b] / b`` (ties: the smaller
    batch), among those whose batch time fits ``slo_ms``; None when none fits."""
    fitting = [(ms / b, b) for b, ms in latency_ms.items() if slo_ms is None or ms <= slo_ms]
    if not fitting:
        return None
    per_request, batch = min(fitting)
    return ServiceCost(batch=int(batch), ms=float(per_request))


def capacity(latency_ms: Mapping[int, float], slo_ms: float | None = None) -> float:
    """Requests per second one worker serves at the best batch size (0 when none fits)."""
    cost = best_batch(latency_ms, slo_ms)
    return 0.0 if cost is None else 1000.0 / cost.ms


def fluid_bound(rate: float, accuracy: Mapping[str, float], latency_ms: Mapping[str, Mapping[int, float]], slo_ms: float | None = None) -> FluidBound:
    """The fluid bound at ``rate`` requests per second (module docstring), from the
    accuracy of each sub-network and its latency table ``lat[s][b]`` (ms per batch of ``b``)."""
    from scipy.optimize import linprog

    if rate < 0:
        raise UserError(f"fluid bound: the offered rate must be >= 0, got {rate}")
    missing = sorted(set(accuracy) ^ set(latency_ms))
    if missing:
        raise UserError(f"fluid bound: accuracy and latency table name different sub-networks ({', '.join(missing)})")
    for s, table in latency_ms.items():
        bad = [b for b, ms in table.items() if int(b) < 1 or not ms > 0]
        if bad or not table:
            raise UserError(f"fluid bound: sub-network {s}: latency table needs batch sizes >= 1 with times > 0 (got {dict(table)})")
    costs = {s: c for s in accuracy if (c := best_batch(latency_ms[s], slo_ms)) is not None}
    names = list(costs)
    # Variables: x_s for each servable sub-network, then x_drop. linprog minimises: negate.
    objective = [-float(accuracy[s]) for s in names] + [0.0]
    busy = [[rate * costs[s].ms / 1000.0 for s in names] + [0.0]]
    result = linprog(objective, A_ub=busy, b_ub=[1.0], A_eq=[[1.0] * (len(names) + 1)], b_eq=[1.0], bounds=(0, None), method="highs")
    if result.status != 0:  # cannot happen: dropping everything is always feasible
        raise RuntimeError(f"fluid bound: linprog failed ({result.message})")
    shares = [max(0.0, float(v)) for v in result.x]
    mix = {s: x for s, x in zip(names, shares) if x > 1e-9}
    return FluidBound(
        rate=float(rate),
        accuracy=float(-result.fun),
        mix=mix,
        dropped=shares[-1],
        utilisation=float(sum(rate * costs[s].ms / 1000.0 * x for s, x in mix.items())),
        costs=costs,
    )
