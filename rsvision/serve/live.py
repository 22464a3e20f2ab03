"""The live view's numbers: a ring of per-second windows of what the server did.

The server notes every image asked for (``arrived``), answered (``answered``, with its
latency and sub-network) and shed with a 503 (``dropped``) on its own clock (milliseconds,
:func:`rsvision.serve.scheduler.monotonic_ms` unless injected). Window ``k`` holds the
events with ``floor(t / window_ms) = k``; the ring keeps the last ``span`` windows, so
memory is bounded whatever the load (a window holds its answers' latencies, at most the
answers of one second).

:meth:`LiveWindows.snapshot` gives the *complete* windows of the span, oldest first, empty
ones included (a quiet second is a zero on the curve, not a gap): per window the offered
load, answers, drops and late answers per second, the 99th percentile of the answers'
latency (numpy's linear percentile, as the load generator's; None without answers), the
answers per sub-network and the sub-network *chosen*: the one that answered most (ties: the
more accurate, earlier in ``order``). ``GET /live.json`` serves it and ``GET /`` draws it.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsvision.serve.loadgen import percentile
from rsvision.serve.scheduler import monotonic_ms

#: Windows kept: five minutes of one-second windows.
SPAN = 300
WINDOW_MS = 1000.0


@dataclass
class Window:
    """What happened in one window: counts, the answers' latencies (ms), answers per sub-network."""

    index: int
    offered: int = 0
    answered: int = 0
    dropped: int = 0
    late: int = 0
    latencies: list[float] = field(default_factory=list)
    subnets: Counter = field(default_factory=Counter)


class LiveWindows:
    """The ring of the last ``span`` windows of ``window_ms`` each (module docstring); safe to
    call from several threads."""

    def __init__(self, slo_ms: float, span: int = SPAN, window_ms: float = WINDOW_MS, clock: Callable[[], float] = monotonic_ms) -> None:
        if span < 1 or not window_ms > 0:
            raise ValueError(f"live windows: expected span >= 1 and window_ms > 0, got {span} and {window_ms}")
        self.slo_ms, self.span, self.window_ms, self.clock = float(slo_ms), int(span), float(window_ms), clock
        self._ring: dict[int, Window] = {}
        self._lock = threading.Lock()

    def _index(self, t: float) -> int:
        return math.floor(t / self.window_ms)

    def _window(self, t: float) -> Window:
        """The window of time ``t``, created when new; windows older than the span are forgotten."""
        index = self._index(t)
        window = self._ring.get(index)
        if window is None:
            window = self._ring[index] = Window(index)
            newest = max(self._ring)
            for old in [k for k in self._ring if k <= newest - self.span]:
                del self._ring[old]
        return window

    def arrived(self, t: float, n: int = 1) -> None:
        """``n`` images asked for at ``t`` (ms)."""
        with self._lock:
            self._window(t).offered += n

    def answered(self, t: float, latency_ms: float, subnet: str) -> None:
        """One answer at ``t``, ``latency_ms`` after its arrival, by ``subnet``; late past the SLO."""
        with self._lock:
            window = self._window(t)
            window.answered += 1
            window.latencies.append(float(latency_ms))
            window.subnets[subnet] += 1
            if latency_ms > self.slo_ms:
                window.late += 1

    def dropped(self, t: float) -> None:
        """One image shed with a 503 at ``t``."""
        with self._lock:
            self._window(t).dropped += 1

    def snapshot(self, order: Sequence[str] = ()) -> dict[str, Any]:
        """The complete windows of the span, oldest first (module docstring); ``t`` is each
        window's start in seconds relative to the current window's start (so the newest is
        ``-window_s``). Rates are per second; ``order`` ranks sub-networks, most accurate first."""
        now = self._index(self.clock())
        per_second = 1000.0 / self.window_ms
        rank = {s: i for i, s in enumerate(order)}
        with self._lock:
            kept = self._ring
            windows = []
            for index in range(now - self.span, now):
                w = kept.get(index, Window(index))
                chosen = min(w.subnets, key=lambda s: (-w.subnets[s], rank.get(s, len(rank)), s)) if w.subnets else None
                windows.append({
                    "t": (index - now) * self.window_ms / 1000.0,
                    "offered": w.offered * per_second,
                    "answered": w.answered * per_second,
                    "dropped": w.dropped * per_second,
                    "late": w.late * per_second,
                    "p99_ms": percentile(w.latencies, 99),
                    "subnets": dict(w.subnets),
                    "chosen": chosen,
                })
        return {"slo_ms": self.slo_ms, "window_s": self.window_ms / 1000.0, "order": list(order), "windows": windows}
