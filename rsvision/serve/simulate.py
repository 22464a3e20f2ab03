"""Serving at scale, simulated: replicas that each run the real scheduler, a router and an autoscaler.

A discrete-event simulation on one clock (milliseconds). Every replica holds a
:class:`~rsvision.serve.scheduler.Scheduler`, the server's own, unchanged, whose clock is the
simulation's; a batch of ``n`` requests on sub-network ``s`` takes ``lat[s][b]`` of the
measured latency table (``b`` the smallest table size ``>= n``), the time the server's
worker would take. As in the server, a free replica dispatches at once when a request
arrives and again when its batch ends; what the scheduler sheds is dropped (a 503).

- **Routing.** Each arrival goes to the ready replica with the fewest requests waiting or
  running (join the shortest queue; ties: the oldest replica), as Ray Serve's
  power-of-two-choices router approximates.
- **Replicas.** A replica launched at ``t`` takes requests from ``t + startup_s`` (loading
  the model) and costs from ``t``; one removed takes no new requests, finishes its queue,
  then stops costing. *Replica-seconds* are the integral of the replicas that cost.
- **The autoscaler** looks every ``tick_s`` at what the ready replicas did over the last
  ``lookback_s`` and sets a target count in ``[min_replicas, max_replicas]``; a target
  above the count launches replicas at once, one below it removes them only after it has
  held for ``down_s`` (scaling down waits out a burst's gaps, as Ray Serve's
  ``downscale_delay_s`` does). It decides nothing while launched replicas are still
  starting, and after every change waits for a whole look-back of the new count: the
  signals of a count that is about to change would launch replicas twice for one burst.
  Two policies:

  - :class:`QueueLength` (the baseline: every replica runs ``fixed:`` the most accurate
    sub-network): Ray Serve's default rule, ``target = ceil(ongoing / target_ongoing)``,
    with ``ongoing`` the requests waiting or running on all replicas, averaged over the
    look-back's samples.
  - :class:`DegradeThenScale` (every replica ``adaptive``): a burst is first absorbed by
    the schedulers moving to cheaper sub-networks on the replicas already running; the
    autoscaler watches the replicas' SLO signals, the shed rate ``d`` (requests dropped over
    requests routed) and the share ``g`` of batches run below the most accurate
    sub-network, and when ``d > 0`` or ``g > degraded_up`` adds ``ceil(n max(d, g))``
    replicas (at least one) to climb back to the most accurate one; it removes one when
    nothing was shed, every batch ran on the most accurate sub-network and the replicas
    would stay below ``slack`` busy with one fewer, ``u n / (n - 1) < slack`` (``u``: the
    busy share of the ready replicas' time).

The outcome is the load generator's metrics per request (:mod:`rsvision.serve.loadgen`):
SLO attainment (answered within the SLO, over all requests), effective accuracy (the
accuracy of the sub-network that answered, for answers within the SLO, over all requests:
the profile's accuracy stands for the chance the answer is right) and replica-seconds.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsvision.errors import UserError
from rsvision.serve.loadgen import Phase, poisson_arrivals
from rsvision.serve.scheduler import Batch, LatencyTable, Request, Scheduler


@dataclass(frozen=True)
class Profile:
    """A measured latency table ``lat[s][b]`` (ms), each sub-network's accuracy and the SLO."""

    latency_ms: dict[str, dict[int, float]]
    accuracy: dict[str, float]
    slo_ms: float

    @property
    def order(self) -> list[str]:
        """The sub-networks, most accurate first."""
        return sorted(self.accuracy, key=lambda s: -self.accuracy[s])

    @property
    def top(self) -> str:
        return self.order[0]

    def batch_ms(self, subnet: str, n: int) -> float:
        """What a batch of ``n`` takes: the table's time at the smallest size ``>= n``."""
        row = self.latency_ms[subnet]
        return row[min(b for b in row if b >= n)]


def read_profile(path: str | Path) -> Profile:
    """A profile JSON (``latency_ms``: sub-network -> batch size -> ms, ``accuracy``:
    sub-network -> percent, ``slo_ms``), as ``benchmarks/serving.py`` writes it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"--profile {path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UserError(f"--profile {path}: not JSON ({exc})") from None
    for key in ("latency_ms", "accuracy", "slo_ms"):
        if key not in data:
            raise UserError(f"--profile {path}: no field {key!r} (expected latency_ms, accuracy, slo_ms)")
    latency, accuracy = data["latency_ms"], data["accuracy"]
    if not latency or set(latency) != set(accuracy):
        raise UserError(f"--profile {path}: latency_ms and accuracy must name the same sub-networks ({sorted(latency)} vs {sorted(accuracy)})")
    try:
        table = {str(s): {int(b): float(ms) for b, ms in row.items()} for s, row in latency.items()}
        acc = {str(s): float(a) for s, a in accuracy.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"--profile {path}: latency_ms needs numbers per batch size and accuracy a number per sub-network ({exc})") from None
    LatencyTable(table)  # the scheduler's own checks: every sub-network at every size, positive times
    return Profile(table, acc, float(data["slo_ms"]))


def bursty_trace(mean_rate: float, duration_s: float, seed: int = 0, burst_factor: float = 4.0, burst_share: float = 0.2,
                 burst_s: tuple[float, float] = (5.0, 20.0)) -> np.ndarray:
    """Arrival times (s) of a Poisson process whose rate jumps between a base rate and
    ``burst_factor`` times it: bursts of uniform length in ``burst_s`` start at random, so
    that about ``burst_share`` of the time is burst; the base rate is set so that the mean
    rate is ``mean_rate``, ``base (1 + share (factor - 1)) = mean``. Seeded."""
    if not (mean_rate > 0 and duration_s > 0 and burst_factor >= 1 and 0 <= burst_share < 1):
        raise UserError(f"bursty trace: expected rate > 0, duration > 0, factor >= 1 and share in [0, 1), got {mean_rate}, {duration_s}, {burst_factor}, {burst_share}")
    rng = np.random.default_rng([seed, 2])
    mean_burst = sum(burst_s) / 2
    gap = mean_burst * (1 - burst_share) / burst_share if burst_share else math.inf  # mean base time between bursts
    phases, t = [], 0.0
    base = mean_rate / (1 + burst_share * (burst_factor - 1))
    while t < duration_s:
        quiet = min(duration_s, t + (rng.exponential(gap) if burst_share else duration_s))
        phases.append(Phase("base", t, quiet, base))
        t = quiet
        if t < duration_s:
            end = min(duration_s, t + rng.uniform(*burst_s))
            phases.append(Phase("burst", t, end, base * burst_factor))
            t = end
    return poisson_arrivals([p for p in phases if p.end > p.start], seed)


@dataclass
class Replica:
    """One replica: its scheduler, when it was launched and is ready, and what it did since
    the autoscaler last looked (requests routed, shed, batches, batches below the top, busy ms)."""

    id: int
    scheduler: Scheduler
    launched: float
    ready_at: float
    batch: Batch | None = None
    draining: bool = False
    stopped: float | None = None
    routed: int = 0
    shed: int = 0
    batches: int = 0
    below_top: int = 0
    busy_ms: float = 0.0

    @property
    def ongoing(self) -> int:
        """Requests waiting or running."""
        return len(self.scheduler) + (len(self.batch.requests) if self.batch is not None else 0)


@dataclass(frozen=True)
class Signals:
    """What the ready replicas did over the look-back: requests ``routed`` and ``shed``,
    ``batches`` run and those ``below_top``, the busy share ``utilisation`` of their time,
    the mean ``ongoing`` requests (all replicas together) over the samples, and ``replicas``:
    the count the autoscaler controls (launched, not removed)."""

    routed: int
    shed: int
    batches: int
    below_top: int
    utilisation: float
    ongoing: float
    replicas: int

    @property
    def shed_rate(self) -> float:
        return self.shed / self.routed if self.routed else 0.0

    @property
    def degraded(self) -> float:
        return self.below_top / self.batches if self.batches else 0.0


@dataclass(frozen=True)
class QueueLength:
    """Ray Serve's default rule (module docstring): ``ceil(ongoing / target_ongoing)``."""

    target_ongoing: float = 2.0
    adaptive = False

    def target(self, s: Signals) -> int:
        return math.ceil(s.ongoing / self.target_ongoing - 1e-9)

    @property
    def name(self) -> str:
        return f"fixed, queue length (target {self.target_ongoing:g} ongoing)"


@dataclass(frozen=True)
class DegradeThenScale:
    """Degrade first, then scale on the SLO signals (module docstring)."""

    degraded_up: float = 0.2
    slack: float = 0.7
    adaptive = True

    def target(self, s: Signals) -> int:
        n = s.replicas
        pressure = max(s.shed_rate, s.degraded)
        if s.shed_rate > 0 or s.degraded > self.degraded_up:
            return n + max(1, math.ceil(n * pressure))
        if s.shed == 0 and s.below_top == 0 and n > 1 and s.utilisation * n / (n - 1) < self.slack:
            return n - 1
        return n

    @property
    def name(self) -> str:
        return f"degrade-then-scale (up at {self.degraded_up:g} degraded, down below {self.slack:g} busy)"


@dataclass
class Autoscale:
    """When and how far the autoscaler may move (module docstring)."""

    min_replicas: int = 1
    max_replicas: int = 64
    startup_s: float = 10.0
    tick_s: float = 1.0
    lookback_s: float = 5.0
    down_s: float = 30.0

    def check(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise UserError(f"--min-replicas {self.min_replicas} --max-replicas {self.max_replicas}: expected 1 <= min <= max")
        for option, value in (("--startup-s", self.startup_s), ("--down-s", self.down_s)):
            if value < 0:
                raise UserError(f"{option} {value}: expected 0 or more")
        if not (self.tick_s > 0 and self.lookback_s >= self.tick_s):
            raise UserError(f"--tick-s {self.tick_s} --lookback-s {self.lookback_s}: expected tick > 0 and look-back >= tick")


@dataclass
class Result:
    """Per request: ``latency_ms`` (None: dropped) and the ``subnet`` that answered; the
    replica count over time (``(t_s, count)`` at each change, counting replicas that cost)."""

    arrivals: np.ndarray
    latency_ms: list[float | None]
    subnet: list[str | None]
    replica_seconds: float
    replicas: list[tuple[float, int]] = field(default_factory=list)

    def summary(self, profile: Profile) -> dict:
        """Attainment and effective accuracy in percent of the requests, replica-seconds, mix."""
        n = len(self.latency_ms)
        on_time = [s for lat, s in zip(self.latency_ms, self.subnet) if lat is not None and lat <= profile.slo_ms]
        answered = [s for s in self.subnet if s is not None]
        duration = float(self.replicas[-1][0]) if self.replicas else 0.0
        mix = Counter(answered)
        return {
            "requests": n,
            "answered": len(answered),
            "dropped": n - len(answered),
            "attainment": 100.0 * len(on_time) / n if n else None,
            "effective_accuracy": sum(profile.accuracy[s] for s in on_time) / n if n else None,
            "answer_accuracy": sum(profile.accuracy[s] for s in answered) / len(answered) if answered else None,
            "replica_seconds": self.replica_seconds,
            "mean_replicas": self.replica_seconds / duration if duration else None,
            "peak_replicas": max((c for _, c in self.replicas), default=0),
            "mix": {s: mix[s] / len(answered) for s in profile.order if mix[s]} if answered else {},
        }


def simulate(arrivals_s: Sequence[float], profile: Profile, policy: QueueLength | DegradeThenScale, scale: Autoscale | None = None,
             initial: int | None = None, max_queue: int = 64, margin_ms: float = 0.0, batch_sizes: Sequence[int] | None = None) -> Result:
    """Serve ``arrivals_s`` (seconds, ascending) with replicas of the scheduler under ``policy``
    (module docstring); ``initial`` replicas (default ``scale.min_replicas``) are ready at 0.
    ``batch_sizes``: the sizes the schedulers may run (default: every size of the table)."""
    scale = scale or Autoscale()
    scale.check()
    sizes = sorted(batch_sizes or next(iter(profile.latency_ms.values())))
    table = {s: {b: row[b] for b in sizes} for s, row in profile.latency_ms.items()}
    subnets = profile.order if policy.adaptive else [profile.top]
    arrivals = np.asarray(arrivals_s, dtype=float) * 1000.0
    latency: list[float | None] = [None] * len(arrivals)
    answered_by: list[str | None] = [None] * len(arrivals)
    now = 0.0
    replicas: list[Replica] = []
    events: list[tuple[float, int, str, int]] = []  # (ms, order, kind, replica id)
    order = iter(range(1 << 62))
    history: list[tuple[float, int]] = []
    ticks: deque[tuple] = deque(maxlen=max(1, round(scale.lookback_s / scale.tick_s)))  # per tick: routed, shed, batches, below top, busy ms, ready ms, ongoing
    below_since: float | None = None

    def clock() -> float:
        return now

    def costing() -> int:
        return sum(r.stopped is None for r in replicas)

    def note() -> None:
        count = costing()
        if not history or history[-1][1] != count:
            history.append((now / 1000.0, count))

    def launch(ready_at: float) -> None:
        replica = Replica(len(replicas), Scheduler(list(subnets), LatencyTable(table), max_queue=max_queue, margin_ms=margin_ms, clock=clock), now, ready_at)
        replicas.append(replica)
        if ready_at > now:
            heapq.heappush(events, (ready_at, next(order), "ready", replica.id))
        note()

    def start(replica: Replica) -> None:
        """The worker is free: dispatch (drops are final), run the batch or stop when drained."""
        dispatch = replica.scheduler.dispatch()
        replica.shed += len(dispatch.dropped)
        batch = dispatch.batch
        if batch is None:
            if replica.draining and replica.stopped is None:
                replica.stopped = now
                note()
            return
        replica.batch = batch
        ms = profile.batch_ms(batch.subnet, len(batch.requests))
        replica.batches += 1
        replica.below_top += batch.subnet != profile.top
        replica.busy_ms += ms
        heapq.heappush(events, (now + ms, next(order), "done", replica.id))

    def finish(replica: Replica) -> None:
        batch, replica.batch = replica.batch, None
        replica.scheduler.observe(batch, now - batch.start)
        for request in batch.requests:
            latency[request.payload] = now - request.arrival
            answered_by[request.payload] = batch.subnet
        start(replica)

    def autoscale() -> None:
        """One tick: fold the tick's counters into the look-back, then move toward the target."""
        nonlocal below_since
        ready = [r for r in replicas if r.ready_at <= now and r.stopped is None]
        ticks.append((sum(r.routed for r in ready), sum(r.shed for r in ready), sum(r.batches for r in ready),
                      sum(r.below_top for r in ready), sum(r.busy_ms for r in ready), len(ready) * scale.tick_s * 1000.0,
                      float(sum(r.ongoing for r in replicas if r.stopped is None))))
        for r in replicas:
            r.routed = r.shed = r.batches = r.below_top = 0
            r.busy_ms = 0.0
        live = [r for r in replicas if r.stopped is None and not r.draining]
        heapq.heappush(events, (now + scale.tick_s * 1000.0, next(order), "tick", -1))
        if any(r.ready_at > now for r in live):  # replicas still starting: wait, then look at them
            ticks.clear()
            return
        if len(ticks) < ticks.maxlen:  # a whole look-back since the last change
            return
        routed, shed, batches, below, busy, ready_ms, ongoing = (sum(column) for column in zip(*ticks))
        signals = Signals(routed, shed, batches, below, busy / ready_ms if ready_ms else 0.0, ongoing / len(ticks), len(live))
        target = min(scale.max_replicas, max(scale.min_replicas, policy.target(signals)))
        if target < len(live):
            below_since = now if below_since is None else below_since
            if now - below_since >= scale.down_s * 1000.0:
                below_since = None
                for replica in sorted(live, key=lambda r: (r.ready_at <= now, r.ongoing, -r.id))[: len(live) - target]:
                    replica.draining = True  # the ones still starting first, then the least busy
                    if replica.batch is None and not len(replica.scheduler):
                        replica.stopped = now
                note()
                ticks.clear()  # the next decision sees the new count's own signals
        else:
            below_since = None
            for _ in range(target - len(live)):
                launch(now + scale.startup_s * 1000.0)
            if target > len(live):
                ticks.clear()

    for _ in range(initial if initial is not None else scale.min_replicas):
        launch(0.0)
    heapq.heappush(events, (scale.tick_s * 1000.0, next(order), "tick", -1))
    end = (arrivals[-1] if len(arrivals) else 0.0)
    i = 0
    while i < len(arrivals) or any(r.batch is not None for r in replicas):
        if i < len(arrivals) and (not events or arrivals[i] <= events[0][0]):
            now = float(arrivals[i])
            ready = [r for r in replicas if r.ready_at <= now and not r.draining and r.stopped is None]
            replica = min(ready, key=lambda r: (r.ongoing, r.id))
            replica.routed += 1
            if replica.scheduler.submit(Request(now, now + profile.slo_ms, payload=i)) is not None:
                replica.shed += 1
            elif replica.batch is None:
                start(replica)
            i += 1
            continue
        now, _, kind, rid = heapq.heappop(events)
        if kind == "done":
            finish(replicas[rid])
        elif kind == "tick":
            if now <= end:
                autoscale()
        # "ready": nothing to do; the router sees the replica from now on
    now = max(now, end)
    for replica in replicas:
        if replica.stopped is None:
            replica.stopped = now
    history.append((now / 1000.0, 0))
    cost = sum(r.stopped - r.launched for r in replicas) / 1000.0
    return Result(arrivals / 1000.0, latency, answered_by, cost, history)
