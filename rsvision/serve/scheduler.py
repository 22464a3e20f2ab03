"""The serving scheduler: which queued requests run next, on which sub-network, in which batch.

Pure: no I/O and no threads (the server calls it under its own lock), and time comes from
an injected clock in milliseconds, so every decision can be checked by hand.

- **Deadlines.** A request arriving at ``a`` must be answered by ``d = a + SLO`` (or earlier,
  when it asks for a tighter one). The queue is a heap ordered by deadline, earliest first
  (Clipper's and Proteus's deadline-ordered queues).
- **The latency table.** ``lat[s][b]``: milliseconds one batch of ``b`` requests takes on
  sub-network ``s`` (the server measures it at start-up over the worker's whole path, see
  :mod:`rsvision.serve.runner`). Each batch run at a table size corrects its cell online as
  TCP's round-trip estimator does (Jacobson and Karels): a moving average of the time and one
  of its deviation, ``e = t - lat``, ``lat <- lat + alpha e``, ``dev <- dev + alpha (|e| - dev)``
  (INFaaS profiles the table; the averages follow what this machine does now). A batch of
  ``n`` requests is planned at ``cost(s, n) = lat[s][b] + k dev[s][b]`` for the smallest
  table size ``b >= n`` (``k = 2``): a machine whose times scatter is planned for its slow
  batches, not its median one.
- **The reserve.** What follows a batch before its answers leave (the worker hands them to
  the event loop, which may be busy) is kept in hand: ``reserve = margin + h``, with ``h`` a
  moving average of the observed hand-over times.
- **Shedding.** A request that cannot make its deadline even alone on the policy's cheapest
  sub-network, ``now + min_s cost(s, 1) + reserve > d``, is dropped at once (at arrival or at
  the next dispatch), never left in the queue; a request arriving at a full queue
  (``max_queue``) is dropped too. The server answers both with HTTP 503. One exception keeps
  the table honest: when the worker would otherwise sit idle (nothing running, nothing else
  queued), the request with the most slack that is not yet past its deadline is served alone
  on the cheapest sub-network. Nothing else wanted the worker, and its time corrects a table
  that an overload or a slow spell inflated; without it, a table that calls every request
  hopeless would shed every request forever, since no batch would ever run to correct it.
- **Dispatch.** With the queue ``q_1 .. q_m`` in deadline order, the plan ``(s, b)`` serves
  it in that order in batches of ``b`` on ``s``; it is *on time* when every batch ends by the
  earliest deadline in it: batch ``k`` ends at ``t_k = now + sum_{j <= k} cost(s, n_j)`` and
  needs ``t_k + reserve <= d(first request of batch k)``. The dispatch takes the most
  accurate sub-network with an on-time plan, at the largest batch size whose plan is on
  time for it, and runs that plan's first batch. For the first batch this is the rule
  ``now + lat[s][b] <= the earliest deadline in the batch``; the later batches keep the head
  of the queue from taking a large sub-network that would leave the requests behind it
  late: the choice follows the slack of the whole queue, as SuperServe's SlackFit does.
  When no plan is on time (overload), the dispatch serves the most requests per
  millisecond, ``n / cost(s, n)``, among the first batches that still end in time (ties:
  the more accurate sub-network); what cannot be saved is shed at the next dispatches.
- **Policies.** ``adaptive`` chooses among every sub-network, ``fixed:ID`` among one (a
  static deployment: the baseline), with the same batching and shedding.

A batch holds one sub-network and so one input size: every image is brought to that
sub-network's resolution by the evaluation view.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsvision.errors import UserError

ADAPTIVE = "adaptive"
FIXED = "fixed:"
#: Weight of a new observation in the moving averages (time, deviation, hand-over).
ALPHA = 0.2
#: Deviations added to a cell's average time when a batch is planned.
DEVIATIONS = 2.0
#: Drop reasons: the deadline cannot be met any more, or the queue is full.
HOPELESS = "deadline"
QUEUE_FULL = "queue_full"


def monotonic_ms() -> float:
    """The default clock: a monotonic time in milliseconds."""
    return time.monotonic() * 1000.0


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> list[int]:
    """``"1,2,4,8"`` → ``[1, 2, 4, 8]`` (sorted, without repeats; each a positive integer)."""
    sizes = set()
    for token in str(text).split(","):
        token = token.strip()
        if not token.isdigit() or int(token) < 1:
            raise UserError(f"{option} {text}: expected positive batch sizes separated by commas, such as 1,2,4,8")
        sizes.add(int(token))
    return sorted(sizes)


def parse_policy(text: str, subnets: Sequence[str], option: str = "--policy") -> list[str]:
    """The sub-networks a policy may choose among: every one for ``adaptive``, one for ``fixed:ID``."""
    text = str(text).strip()
    if text == ADAPTIVE:
        return list(subnets)
    if text.startswith(FIXED):
        chosen = text[len(FIXED):].strip()
        if chosen in subnets:
            return [chosen]
        raise UserError(f"{option} {text}: no sub-network {chosen or '(empty)'} here (served: {', '.join(subnets)})")
    raise UserError(f"{option} {text}: expected adaptive or fixed:ID with ID one of {', '.join(subnets)}")


class LatencyTable:
    """``lat[s][b]`` in milliseconds and its deviation, corrected online (module docstring);
    the deviation starts at 0: the start-up table is a median."""

    def __init__(self, table: Mapping[str, Mapping[int, float]], alpha: float = ALPHA, deviations: float = DEVIATIONS) -> None:
        if not table:
            raise ValueError("a latency table needs at least one sub-network")
        sizes = sorted({int(b) for row in table.values() for b in row})
        for s, row in table.items():
            if sorted(int(b) for b in row) != sizes or sizes[0] < 1 or not all(ms > 0 for ms in row.values()):
                raise ValueError(f"latency table: sub-network {s} needs a positive time at every batch size {sizes}, got {dict(row)}")
        if not 0 < alpha <= 1:
            raise ValueError(f"latency table: the moving average's weight must be in (0, 1], got {alpha}")
        self.sizes = sizes
        self.alpha, self.deviations = alpha, deviations
        self._ms = {str(s): {int(b): float(ms) for b, ms in row.items()} for s, row in table.items()}
        self._dev = {s: {b: 0.0 for b in row} for s, row in self._ms.items()}

    @property
    def subnets(self) -> list[str]:
        return list(self._ms)

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    def size_for(self, n: int) -> int:
        """The smallest table batch size that holds ``n`` requests."""
        return next(b for b in self.sizes if b >= n)

    def cost(self, subnet: str, n: int) -> float:
        """Milliseconds a batch of ``n`` requests is planned at on ``subnet``: ``lat + k dev``."""
        b = self.size_for(n)
        return self._ms[subnet][b] + self.deviations * self._dev[subnet][b]

    def observe(self, subnet: str, n: int, ms: float) -> None:
        """Fold an observed batch time into its cell. Only a batch that fills a table size counts:
        a smaller one would pull the cell of the size above it down."""
        if n in self._ms[subnet]:
            error = float(ms) - self._ms[subnet][n]
            self._ms[subnet][n] += self.alpha * error
            self._dev[subnet][n] += self.alpha * (abs(error) - self._dev[subnet][n])

    def as_dict(self) -> dict[str, dict[int, float]]:
        """The average times ``lat[s][b]``."""
        return {s: dict(row) for s, row in self._ms.items()}

    def planned(self) -> dict[str, dict[int, float]]:
        """The times batches are planned at, ``cost(s, b) = lat + k dev``, for every cell."""
        return {s: {b: self.cost(s, b) for b in row} for s, row in self._ms.items()}


@dataclass(eq=False)
class Request:
    """A queued request: ``arrival`` and ``deadline`` on the scheduler's clock (ms) and what the
    server needs to answer it (``payload``: the decoded image and its future)."""

    arrival: float
    deadline: float
    payload: Any = None


@dataclass(frozen=True)
class Batch:
    """One dispatch: ``requests`` (earliest deadline first) run together on ``subnet``;
    ``predicted_ms`` is the table's time for them, ``start`` the clock at dispatch."""

    subnet: str
    requests: list[Request]
    predicted_ms: float
    start: float


@dataclass(frozen=True)
class Dispatch:
    """What one call of :meth:`Scheduler.dispatch` decided: a batch to run (None: the queue is
    empty) and the requests dropped because they can no longer make their deadline."""

    batch: Batch | None
    dropped: list[Request]


@dataclass
class Scheduler:
    """The deadline-ordered queue and the dispatch rule (module docstring).

    ``subnets``: the sub-networks the policy may choose among, most accurate first (the order
    is the accuracy ranking); ``table``: their latency table; ``margin_ms``: time kept in
    hand for what follows a batch besides the observed hand-over (writing the answer).
    """

    subnets: list[str]
    table: LatencyTable
    max_queue: int = 64
    margin_ms: float = 0.0
    clock: Callable[[], float] = monotonic_ms
    drops: Counter = field(default_factory=Counter)
    handover_ms: float = field(default=0.0, init=False)
    _busy: bool = field(default=False, init=False, repr=False)
    _heap: list[tuple[float, int, Request]] = field(default_factory=list, repr=False)
    _order: itertools.count = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        if not self.subnets:
            raise ValueError("a scheduler needs at least one sub-network")
        unknown = [s for s in self.subnets if s not in self.table.subnets]
        if unknown:
            raise ValueError(f"sub-networks without a latency table row: {', '.join(unknown)}")
        if self.max_queue < 1:
            raise UserError(f"--max-queue {self.max_queue}: expected at least 1")

    def __len__(self) -> int:
        return len(self._heap)

    def _cheapest_ms(self) -> float:
        return min(self.table.cost(s, 1) for s in self.subnets)

    def hopeless(self, deadline: float, now: float | None = None) -> bool:
        """Whether a request due at ``deadline`` cannot be answered in time any more."""
        now = self.clock() if now is None else now
        return now + self._cheapest_ms() + self.reserve > deadline

    def admits(self, deadline: float) -> str | None:
        """Why a request due at ``deadline`` would be refused now (a drop reason), or None.
        Lets the server refuse before it spends time decoding the image."""
        now = self.clock()
        idle = not self._busy and not self._heap  # the worker would do nothing: take it (module docstring)
        if self.hopeless(deadline, now) and not (idle and deadline > now):
            return HOPELESS
        if len(self._heap) >= self.max_queue:
            return QUEUE_FULL
        return None

    def submit(self, request: Request) -> str | None:
        """Queue ``request``; returns the drop reason when it is refused instead (and counts it)."""
        reason = self.admits(request.deadline)
        if reason is not None:
            self.drops[reason] += 1
            return reason
        heapq.heappush(self._heap, (request.deadline, next(self._order), request))
        return None

    def dispatch(self) -> Dispatch:
        """Shed the hopeless requests, then take the next batch (module docstring). The worker
        calls it whenever it is free; it is busy from a batch's dispatch to the next call."""
        now = self.clock()
        self._busy = False
        dropped = []
        while self._heap and self.hopeless(self._heap[0][0], now):
            dropped.append(heapq.heappop(self._heap)[2])
        if not self._heap and dropped and dropped[-1].deadline > now:  # the worker would idle: keep the one with the most slack
            kept = dropped.pop()
            heapq.heappush(self._heap, (kept.deadline, next(self._order), kept))
        self.drops[HOPELESS] += len(dropped)
        if not self._heap:
            return Dispatch(None, dropped)
        self._heap.sort()  # a sorted list is still a heap
        deadlines = [d for d, _, _ in self._heap]
        subnet, n = self._choose(now, deadlines)
        requests = [heapq.heappop(self._heap)[2] for _ in range(n)]
        self._busy = True
        return Dispatch(Batch(subnet, requests, self.table.cost(subnet, n), now), dropped)

    def _on_time(self, now: float, deadlines: Sequence[float], subnet: str, size: int) -> bool:
        """Whether serving the queue (``deadlines``, sorted) in batches of ``size`` on ``subnet``
        ends every batch by its earliest deadline."""
        t = now
        for first in range(0, len(deadlines), size):
            t += self.table.cost(subnet, min(size, len(deadlines) - first))
            if t + self.reserve > deadlines[first]:
                return False
        return True

    def _choose(self, now: float, deadlines: Sequence[float]) -> tuple[str, int]:
        """(sub-network, number of requests) of the next batch; ``deadlines`` sorted, not empty."""
        m = len(deadlines)
        for subnet in self.subnets:
            for size in reversed(self.table.sizes):
                if self._on_time(now, deadlines, subnet, size):
                    return subnet, min(size, m)
        # Overload: the most requests per millisecond among first batches still in time.
        in_time = [
            (n / self.table.cost(subnet, n), -rank, subnet, n)
            for rank, subnet in enumerate(self.subnets)
            for n in sorted({min(size, m) for size in self.table.sizes})
            if now + self.table.cost(subnet, n) + self.reserve <= deadlines[0]
        ]
        if not in_time:  # a head kept though hopeless (the worker would idle): alone, on the cheapest
            return min(self.subnets, key=lambda s: self.table.cost(s, 1)), 1
        _, _, subnet, n = max(in_time, key=lambda c: c[:2])
        return subnet, n

    def drain(self) -> list[Request]:
        """Empty the queue; returns what it held, earliest deadline first."""
        requests = [r for _, _, r in sorted(self._heap)]
        self._heap.clear()
        return requests

    @property
    def reserve(self) -> float:
        """Time kept in hand after a batch: the margin and the observed hand-over."""
        return self.margin_ms + self.handover_ms

    def observe_handover(self, ms: float) -> None:
        """Fold the time an answer took from the batch's end to its handler into the reserve."""
        self.handover_ms += self.table.alpha * (float(ms) - self.handover_ms)

    def observe(self, batch: Batch, ms: float) -> None:
        """Correct the latency table with the time ``batch`` took."""
        self.table.observe(batch.subnet, len(batch.requests), ms)
