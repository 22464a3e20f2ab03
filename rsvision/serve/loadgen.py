"""``rsvision loadgen``: an open-loop load generator for a prediction server, and its metrics.

Open loop: the arrival times are drawn before the run (a Poisson process whose rate is
constant within each phase of the load shape, from a seeded ``numpy`` generator) and a
request leaves at its time whether or not earlier ones have been answered, so an overloaded
server shows as late and dropped answers rather than as a slower client (no coordinated
omission). Latency is measured from the request's scheduled time, so a generator that falls
behind its schedule counts against the answer, not for it; the report says how far behind
it fell (``send_lag_ms``).

Load shapes (:func:`load_phases`), ``rates`` in requests per second:

- ``constant``: one rate for the whole duration;
- ``step``: rates ``r1, r2, ..., rk``, each for ``duration / k`` (``1x -> 4x -> 1x``);
- ``spike``: rates ``BASE, PEAK``: ``BASE`` with ``spikes`` bursts at ``PEAK`` of
  ``spike_s`` seconds each (default a tenth of the duration), evenly spaced;
- ``trace``: a file of arrival times, seconds since the start, one per line (replayed as
  they are; the run is one phase).

Each request sends one image of a class-folder tree (``FOLDER/<class>/<image>``; class
indices are the sorted folder names' positions, torchvision's ImageFolder rule, which
rsvision's ``imagefolder`` dataset trains with), chosen by a second stream of the same seed,
so two runs with one seed send the same images at the same times. An answer is correct when
its ``index`` is the folder's class index.

The metrics (:func:`summarize`, :func:`timeline`) are pure functions of the outcomes:

- SLO attainment: answers (HTTP 200) within ``slo_ms`` of the scheduled time, over all
  requests sent (drops, 503, and late answers are misses);
- effective accuracy: answers correct and on time, over all requests (late, dropped or wrong
  = wrong; Model-Switching, HotCloud 2020);
- latency percentiles p50/p95/p99 over the answers; goodput: correct and on-time answers
  per second; the sub-network mix: the share of answers per sub-network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import mimetypes
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from rsvision.errors import UserError

SHAPES = ("constant", "step", "spike", "trace")
#: The answer's fields (rsvision serve's classification contract).
SUBNET_FIELD = "subnet"
#: The request header that asks the server for a deadline (milliseconds from arrival).
DEADLINE_HEADER = "X-Deadline-Ms"
#: Images read from a folder at most (a seeded sample of them).
MAX_IMAGES = 2000


@dataclass(frozen=True)
class Phase:
    """A part of the load with one arrival ``rate`` (requests/s; None for a replayed trace)
    over ``[start, end)`` seconds since the start."""

    name: str
    start: float
    end: float
    rate: float | None

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Schedule:
    """When each request leaves (seconds since the start, ascending) and the phases."""

    times: np.ndarray
    phases: tuple[Phase, ...]

    @property
    def duration(self) -> float:
        return self.phases[-1].end


@dataclass(frozen=True)
class Outcome:
    """What became of one request. ``status`` is the HTTP status (0: no answer: connection
    error, time-out, or the in-flight limit reached); ``latency_ms`` runs from the scheduled
    time to the answer; ``correct`` compares the answer's class index with the image's."""

    time: float
    status: int
    latency_ms: float | None = None
    correct: bool = False
    subnet: str | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None
    send_lag_ms: float = 0.0
    error: str | None = None


# --- the schedule: a pure function of (shape, rates, duration, seed) ---------------------------


def load_phases(shape: str, rates: Sequence[float], duration: float, spike_s: float | None = None, spikes: int = 1) -> list[Phase]:
    """The phases of a load shape (module docstring); ``trace`` has none (see :func:`read_trace`)."""
    if shape not in SHAPES or shape == "trace":
        raise UserError(f"--shape {shape}: expected one of constant, step, spike (a trace takes --trace FILE)")
    if not duration > 0:
        raise UserError(f"--duration: expected a positive number of seconds, got {duration}")
    rates = [float(r) for r in rates]
    if not rates or any(not (r >= 0 and math.isfinite(r)) for r in rates):
        raise UserError(f"--rates: expected rates >= 0 (requests/s), got {', '.join(map(str, rates)) or 'none'}")
    if shape == "constant":
        if len(rates) != 1:
            raise UserError(f"--rates: the constant shape takes one rate, got {len(rates)}")
        return [Phase("constant", 0.0, float(duration), rates[0])]
    if shape == "step":
        edges = np.linspace(0.0, duration, len(rates) + 1)
        return [Phase(f"step{i + 1}", float(edges[i]), float(edges[i + 1]), r) for i, r in enumerate(rates)]
    if len(rates) != 2:
        raise UserError(f"--rates: the spike shape takes BASE,PEAK, got {len(rates)} rate(s)")
    spike_s = duration / 10 if spike_s is None else float(spike_s)
    if spikes < 1 or not 0 < spike_s * spikes < duration:
        raise UserError(f"--spike-s {spike_s:g} x --spikes {spikes}: the spikes must fit inside --duration {duration:g} with base load around them")
    base, peak = rates
    phases, t = [], 0.0
    for i in range(spikes):
        centre = (i + 0.5) * duration / spikes
        phases.append(Phase(f"base{i + 1}", t, centre - spike_s / 2, base))
        phases.append(Phase(f"spike{i + 1}", centre - spike_s / 2, centre + spike_s / 2, peak))
        t = centre + spike_s / 2
    phases.append(Phase(f"base{spikes + 1}", t, float(duration), base))
    return phases


def poisson_arrivals(phases: Sequence[Phase], seed: int) -> np.ndarray:
    """Arrival times of a Poisson process with each phase's rate, from ``default_rng(seed)``:
    exponential gaps, restarted at each phase's start (memorylessness makes that exact)."""
    rng = np.random.default_rng(seed)
    times = []
    for phase in phases:
        if not phase.rate:
            continue
        # Draw gaps in blocks until the phase is covered; the expected count plus 6 sigma first.
        n = int(phase.rate * phase.seconds + 6 * math.sqrt(phase.rate * phase.seconds) + 10)
        t = phase.start + np.cumsum(rng.exponential(1.0 / phase.rate, n))
        while t[-1] < phase.end:
            t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / phase.rate, n))])
        times.append(t[t < phase.end])
    return np.concatenate(times) if times else np.zeros(0)


def read_trace(path: str | Path) -> np.ndarray:
    """Arrival times from a file, seconds since the start, one per line, ascending (blank
    lines and ``#`` comments skipped); a bad line is named."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"--trace {path}: cannot read ({exc.strerror or exc})") from None
    times, last = [], 0.0
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            t = float(text)
        except ValueError:
            raise UserError(f"{path}:{number}: expected an arrival time in seconds, got {text!r}") from None
        if not (math.isfinite(t) and t >= last):
            raise UserError(f"{path}:{number}: arrival times must be finite, >= 0 and ascending (got {text} after {last:g})")
        times.append(t)
        last = t
    if not times:
        raise UserError(f"{path}: no arrival times (one number of seconds per line)")
    return np.asarray(times)


def make_schedule(shape: str, rates: Sequence[float] = (), duration: float | None = None, seed: int = 0,
                  trace: str | Path | None = None, spike_s: float | None = None, spikes: int = 1) -> Schedule:
    """The arrivals of a run: a pure function of the shape, rates, duration and seed (or the trace)."""
    if shape == "trace":
        if trace is None:
            raise UserError("--shape trace: give the arrival times with --trace FILE")
        if rates:
            raise UserError("--rates: a trace replays its own arrival times; drop --rates")
        times = read_trace(trace)
        end = float(duration) if duration is not None else float(times[-1]) + 1e-9
        times = times[times < end]
        return Schedule(times, (Phase("trace", 0.0, end, None),))
    if trace is not None:
        raise UserError(f"--trace applies to --shape trace, not {shape}")
    if duration is None:
        raise UserError(f"--shape {shape}: give --duration SECONDS")
    phases = load_phases(shape, rates, duration, spike_s, spikes)
    return Schedule(poisson_arrivals(phases, seed), tuple(phases))


def parse_rates(text: str | None, option: str = "--rates") -> list[float]:
    """``"10,40,10"`` -> ``[10.0, 40.0, 10.0]`` (requests per second)."""
    if text is None:
        return []
    try:
        return [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option} {text}: expected rates in requests per second separated by commas, such as 10,40,10") from None


def image_order(requests: int, images: int, seed: int) -> np.ndarray:
    """Which image each request sends: uniform draws from a stream of ``seed`` apart from the arrivals'."""
    return np.random.default_rng([seed, 1]).integers(0, images, requests)


# --- the metrics: pure functions of the outcomes ------------------------------------------------


def on_time(outcome: Outcome, slo_ms: float) -> bool:
    """Answered (HTTP 200) within ``slo_ms`` of the scheduled time."""
    return outcome.status == 200 and outcome.latency_ms is not None and outcome.latency_ms <= slo_ms


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, linear between order statistics (numpy's default); None when empty."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def _percent(count: int, total: int) -> float | None:
    return 100.0 * count / total if total else None


def summarize(outcomes: Sequence[Outcome], slo_ms: float, seconds: float) -> dict:
    """The report of some requests over ``seconds`` of load (module docstring): counts,
    ``attainment`` and ``effective_accuracy`` in percent of the requests sent, the accuracy of
    the answers alone, latency percentiles (ms, answers only), ``goodput`` and
    ``offered_rate`` (requests/s) and the sub-network ``mix`` (share of the answers)."""
    answers = [o for o in outcomes if o.status == 200]
    hits = [o for o in outcomes if on_time(o, slo_ms)]
    good = sum(o.correct for o in hits)
    latencies = [o.latency_ms for o in answers]
    counts: dict[str, int] = {}
    for o in answers:
        counts[o.subnet or "?"] = counts.get(o.subnet or "?", 0) + 1
    return {
        "requests": len(outcomes),
        "answered": len(answers),
        "on_time": len(hits),
        "late": len(answers) - len(hits),
        "dropped": sum(o.status == 503 for o in outcomes),
        "failed": sum(o.status not in (200, 503) for o in outcomes),
        "attainment": _percent(len(hits), len(outcomes)),
        "effective_accuracy": _percent(good, len(outcomes)),
        "answer_accuracy": _percent(sum(o.correct for o in answers), len(answers)),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "offered_rate": len(outcomes) / seconds if seconds > 0 else None,
        "goodput": good / seconds if seconds > 0 else None,
        "mix": {s: n / len(answers) for s, n in sorted(counts.items(), key=lambda kv: -kv[1])},
        "queue_ms": _mean([o.queue_ms for o in answers]),
        "compute_ms": _mean([o.compute_ms for o in answers]),
        "send_lag_p99_ms": percentile([o.send_lag_ms for o in outcomes], 99),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def split_phases(outcomes: Sequence[Outcome], phases: Sequence[Phase]) -> dict[str, list[Outcome]]:
    """The outcomes of each phase, by scheduled time in ``[start, end)`` (the last phase's end included)."""
    parts: dict[str, list[Outcome]] = {p.name: [] for p in phases}
    starts = np.asarray([p.start for p in phases])
    for o in outcomes:
        i = max(0, int(np.searchsorted(starts, o.time, side="right")) - 1)
        parts[phases[i].name].append(o)
    return parts


def subnet_resolution(subnet: str | None) -> int | None:
    """The input resolution of a sub-network id (``"128"``, ``"160w70"``); None if unknown."""
    from rsvision.subnet import SubNet

    try:
        return SubNet.parse(subnet).resolution if subnet else None
    except ValueError:
        return None


def timeline(outcomes: Sequence[Outcome], slo_ms: float, duration: float, window_s: float = 1.0) -> list[dict]:
    """The run in windows of ``window_s`` seconds (by scheduled time): ``offered`` and
    ``goodput`` rates, ``attainment``, ``p99_ms``, the answers' mean ``resolution`` and ``mix``."""
    windows = max(1, math.ceil(duration / window_s - 1e-9))
    buckets: list[list[Outcome]] = [[] for _ in range(windows)]
    for o in outcomes:
        buckets[min(windows - 1, int(o.time // window_s))].append(o)
    rows = []
    for i, bucket in enumerate(buckets):
        seconds = min(window_s, duration - i * window_s)
        summary = summarize(bucket, slo_ms, seconds)
        sizes = [r for o in bucket if o.status == 200 and (r := subnet_resolution(o.subnet)) is not None]
        rows.append({
            "t": i * window_s,
            "offered": summary["offered_rate"],
            "goodput": summary["goodput"],
            "attainment": summary["attainment"],
            "p99_ms": summary["p99_ms"],
            "resolution": float(np.mean(sizes)) if sizes else None,
            "mix": summary["mix"],
        })
    return rows


def report(outcomes: Sequence[Outcome], schedule: Schedule, slo_ms: float, window_s: float = 1.0) -> dict:
    """Overall, per phase and per window (:func:`summarize`, :func:`split_phases`, :func:`timeline`)."""
    parts = split_phases(outcomes, schedule.phases)
    return {
        "overall": summarize(outcomes, slo_ms, schedule.duration),
        "phases": [{"name": p.name, "start": p.start, "end": p.end, "rate": p.rate, **summarize(parts[p.name], slo_ms, p.seconds)} for p in schedule.phases],
        "timeline": timeline(outcomes, slo_ms, schedule.duration, window_s),
    }


#: The columns of :func:`table_rows`.
COLUMNS = ("phase", "req/s", "sent", "in SLO %", "eff. acc. %", "p50 ms", "p95 ms", "p99 ms", "goodput/s", "drops")


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def mix_text(mix: Mapping[str, float], top: int = 3) -> str:
    """``"28 62%, 8 38%"``: the most used sub-networks and their share of the answers."""
    return ", ".join(f"{s} {100 * share:.0f}%" for s, share in list(mix.items())[:top]) or "-"


def _parts(result: dict) -> list[tuple[str, dict]]:
    return [(p["name"], p) for p in result["phases"]] + [("overall", result["overall"])]


def table_rows(result: dict) -> list[list[str]]:
    """One row per phase, then the whole run (``COLUMNS``), as text."""
    return [
        [name, _num(r["offered_rate"]), str(r["requests"]), _num(r["attainment"]), _num(r["effective_accuracy"]),
         _num(r["p50_ms"]), _num(r["p95_ms"]), _num(r["p99_ms"]), _num(r["goodput"]), str(r["dropped"])]
        for name, r in _parts(result)
    ]


def mix_lines(result: dict) -> list[str]:
    """The sub-network mix of each phase, then of the whole run: ``"step1: 128 62%, 64 38%"``."""
    return [f"{name}: {mix_text(r['mix'], top=10)}" for name, r in _parts(result)]


# --- the requests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    """Encoded images held in memory with their class index and content type."""

    bodies: list[bytes]
    labels: list[int]
    types: list[str]
    classes: list[str]


def read_images(folder: str | Path, limit: int = MAX_IMAGES, seed: int = 0) -> ImageSet:
    """The images of a class-folder tree, as files (not decoded): all of them, or a seeded
    sample of ``limit`` (module docstring for the class indices)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--images {folder}: not a folder (expected FOLDER/<class>/<image>)")
    try:
        classes, index = find_classes(str(folder))
        samples = make_dataset(str(folder), index, IMG_EXTENSIONS)
    except FileNotFoundError as exc:
        raise UserError(f"--images {folder}: {exc}") from None
    if len(samples) > limit:
        keep = np.sort(np.random.default_rng([seed, 2]).choice(len(samples), limit, replace=False))
        samples = [samples[i] for i in keep]
    return ImageSet(
        bodies=[Path(p).read_bytes() for p, _ in samples],
        labels=[int(label) for _, label in samples],
        types=[mimetypes.guess_type(p)[0] or "application/octet-stream" for p, _ in samples],
        classes=list(classes),
    )


def check_url(url: str, allow_remote: bool = False) -> str:
    """The prediction URL (``/predict`` added to a bare host); a host other than loopback is
    refused unless ``allow_remote``: a load test is a denial of service to whoever is there."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"URL {url}: expected http://HOST:PORT[/predict]")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise UserError(f"URL {url}: {host} is not this machine; a load test goes to loopback only unless --allow-remote")
    return urlunsplit(parts._replace(path="/predict")) if parts.path in ("", "/") else url


def _answer(response, label: int) -> dict:
    """The fields of an answer the metrics need (a 200 whose body is not the contract: failed)."""
    if response.status_code != 200:
        return {"status": response.status_code}
    try:
        body = response.json()
        return {
            "status": 200,
            "correct": int(body["index"]) == label,
            "subnet": None if body.get(SUBNET_FIELD) is None else str(body[SUBNET_FIELD]),
            "queue_ms": body.get("queue_ms"),
            "compute_ms": body.get("compute_ms"),
        }
    except (ValueError, KeyError, TypeError) as exc:
        return {"status": -1, "error": f"answer without a class index ({type(exc).__name__}: {exc})"}


async def _drive(url: str, schedule: Schedule, images: ImageSet, order: np.ndarray, max_in_flight: int,
                 timeout_s: float, headers: Mapping[str, str]) -> list[Outcome]:
    """Send every request at its time (never waiting for answers) and collect the outcomes."""
    import httpx

    loop = asyncio.get_running_loop()
    outcomes: list[Outcome | None] = [None] * len(schedule.times)
    in_flight = 0

    async def one(i: int, client: httpx.AsyncClient, due: float) -> None:
        nonlocal in_flight
        k = int(order[i])
        lag = (loop.time() - due) * 1000
        try:
            response = await client.post(url, content=images.bodies[k], headers={"Content-Type": images.types[k], **headers})
            fields = _answer(response, images.labels[k])
        except httpx.HTTPError as exc:
            fields = {"status": 0, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            in_flight -= 1
        outcomes[i] = Outcome(time=float(schedule.times[i]), latency_ms=(loop.time() - due) * 1000, send_lag_ms=lag, **fields)

    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        start = loop.time() + 0.05  # a moment to set up before the first arrival
        tasks = []
        for i, t in enumerate(schedule.times):
            due = start + float(t)
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if in_flight >= max_in_flight:
                outcomes[i] = Outcome(time=float(t), status=0, error="in-flight limit reached")
                continue
            in_flight += 1
            tasks.append(asyncio.create_task(one(i, client, due)))
        if tasks:
            # The hard limit: each request has timeout_s from its own start; a little slack for the last ones.
            _, pending = await asyncio.wait(tasks, timeout=timeout_s + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    return [o or Outcome(time=float(schedule.times[i]), status=0, error="no answer before the time-out") for i, o in enumerate(outcomes)]


def loadgen(url: str, images: str | Path, slo_ms: float, shape: str = "constant", rates: Sequence[float] = (),
            duration: float | None = None, seed: int = 0, trace: str | Path | None = None, spike_s: float | None = None,
            spikes: int = 1, max_images: int = MAX_IMAGES, max_requests: int = 100_000, max_in_flight: int = 256,
            timeout_s: float = 10.0, deadline_header: bool = True, allow_remote: bool = False, window_s: float = 1.0) -> dict:
    """``rsvision loadgen``: the schedule (:func:`make_schedule`), the images
    (:func:`read_images`), then :func:`run_load` (its arguments)."""
    check_url(url, allow_remote)  # before reading any image
    schedule = make_schedule(shape, rates, duration, seed, trace, spike_s, spikes)
    result = run_load(url, schedule, read_images(images, max_images, seed), slo_ms, seed, max_requests, max_in_flight,
                      timeout_s, deadline_header, allow_remote, window_s)
    return {"shape": shape, "images": str(images), **result}


def run_load(url: str, schedule: Schedule, images: ImageSet, slo_ms: float, seed: int = 0, max_requests: int = 100_000,
             max_in_flight: int = 256, timeout_s: float = 10.0, deadline_header: bool = True, allow_remote: bool = False,
             window_s: float = 1.0) -> dict:
    """Drive ``url`` with ``schedule`` and report (:func:`report`) with the run's settings.

    Bounded: at most ``max_requests`` arrivals (more is refused before any request), at most
    ``max_in_flight`` unanswered requests (beyond that a request is counted as failed, not
    queued), each request at most ``timeout_s`` seconds. ``deadline_header`` sends
    ``slo_ms`` as the request's deadline (:data:`DEADLINE_HEADER`).
    """
    url = check_url(url, allow_remote)
    if not slo_ms > 0:
        raise UserError(f"--slo-ms: expected a positive number of milliseconds, got {slo_ms}")
    if len(schedule.times) > max_requests:
        raise UserError(f"the load sends {len(schedule.times)} requests, over --max-requests {max_requests} (lower the rates or the duration, or raise the limit)")
    if not images.bodies:
        raise UserError("--images: no image files found under the class folders")
    order = image_order(len(schedule.times), len(images.bodies), seed)
    headers = {DEADLINE_HEADER: f"{slo_ms:g}"} if deadline_header else {}
    began = time.time()
    outcomes = asyncio.run(_drive(url, schedule, images, order, max_in_flight, timeout_s, headers))
    errors = sorted({o.error for o in outcomes if o.error})
    return {
        "url": url,
        "slo_ms": slo_ms,
        "seed": seed,
        "started": began,
        "phases": [asdict(p) for p in schedule.phases],
        "errors": errors[:10],
        **report(outcomes, schedule, slo_ms, window_s),
    }


# --- the plot -----------------------------------------------------------------------------------


def stairs(ax, rows: Sequence[dict], key: str, end: float, **style) -> None:
    """``rows[i][key]`` drawn as a step over each window ``[t_i, t_{i+1})``, the last up to ``end``
    (None: a gap)."""
    edges = [r["t"] for r in rows] + [end]
    ax.stairs([np.nan if r[key] is None else r[key] for r in rows], edges, baseline=None, **style)


def draw(result: dict, path: str | Path, title: str | None = None) -> Path:
    """Offered load and goodput, the answers' mean resolution, and p99 latency against time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rsvision.analysis.plot import output_format
    from rsvision.io import atomic_write

    path = Path(path)
    fmt = output_format(path)
    rows, end = result["timeline"], result["phases"][-1]["end"]
    fig = Figure(figsize=(9, 7), layout="constrained")
    FigureCanvasAgg(fig)
    load, res, lat = fig.subplots(3, 1, sharex=True)
    stairs(load, rows, "offered", end, color="0.3", label="offered")
    stairs(load, rows, "goodput", end, color="C2", label="correct and on time")
    load.set_ylabel("requests / s")
    load.legend(loc="upper left", fontsize=8)
    stairs(res, rows, "resolution", end, color="C0")
    res.set_ylabel("mean resolution (px)")
    stairs(lat, rows, "p99_ms", end, color="C3", label="p99")
    lat.axhline(result["slo_ms"], color="0.5", ls="--", lw=1, label=f"SLO {result['slo_ms']:g} ms")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    lat.set_xlabel("time (s)")
    lat.legend(loc="upper left", fontsize=8)
    for ax in (load, res, lat):
        ax.grid(alpha=0.3)
        for phase in result["phases"][1:]:
            ax.axvline(phase["start"], color="0.8", lw=0.8)
    overall = result["overall"]
    fig.suptitle(title or f"{result['url']}: attainment {overall['attainment'] or 0:.1f} %, effective accuracy {overall['effective_accuracy'] or 0:.1f} %", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=110))
    return path
