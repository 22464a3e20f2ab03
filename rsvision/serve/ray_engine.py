"""``rsvision serve --engine ray``: the server's replicas on Ray Serve, their count set by the SLO signals.

Each replica is a Ray Serve deployment replica that builds the single-process server's
FastAPI application (:func:`rsvision.serve.app.create_app`) around a :class:`Runner` of its
own, so it runs the same worker thread, the same scheduler and the same executor, and
answers the same routes with the same JSON; Ray only feeds it requests:

- **Routing.** Ray Serve's HTTP proxy hands each request to a replica chosen by its default
  router, power of two choices: of two replicas drawn at random, the one with fewer requests
  in flight (queue length). A replica takes up to ``max_queue`` plus the largest batch
  size at once, so its own scheduler, not Ray's queue, decides what waits and what is shed;
  past that the proxy holds one largest batch more, then answers 503 at once: a request
  held in the proxy ages without the scheduler seeing its deadline.
- **Signals.** Every replica reports cumulative counters to the autoscaler
  (``record_autoscaling_stats``): requests taken, requests shed (503), batches run, batches
  run below the most accurate sub-network of the policy, and the milliseconds its executor
  was busy.
- **Replica count.** :func:`slo_policy`, Ray Serve's custom autoscaling policy, turns the
  counters of the look-back window into :class:`rsvision.serve.simulate.Signals` (the shed
  rate ``d``, the degraded share ``g``, the busy share ``u``; :func:`window_signals`) and
  applies the degrade-then-scale rule that the simulation studies,
  :class:`rsvision.serve.simulate.DegradeThenScale`: a burst first moves the schedulers to
  cheaper sub-networks on the replicas already running, then ``d > 0`` or ``g`` above its
  threshold adds ``ceil(n max(d, g))`` replicas (at least one); one is removed when nothing
  was shed, every batch ran on the most accurate sub-network and ``u n / (n - 1)`` stays
  below the slack. As in the simulation, nothing is decided while replicas start or stop,
  nor until a whole look-back has passed since the last change (:func:`decide`); Ray
  applies ``--min-replicas``/``--max-replicas`` and waits :data:`DOWNSCALE_DELAY_S` before
  removing one.
- **Metrics.** Each replica's ``/metrics`` adds ``rsvision_replicas``, the deployment's
  running replicas (from Serve's status); its other metrics are the replica's own: a scrape
  through the proxy reaches the one replica the router picks (Ray's own ``ray_serve_*``
  metrics carry the deployment's totals).

A request's deadline starts when it reaches its replica: the proxy's hop is not counted.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rsvision.errors import UserError
from rsvision.serve.scheduler import HOPELESS, QUEUE_FULL, monotonic_ms
from rsvision.serve.simulate import DegradeThenScale, Signals

APP = "rsvision"
DEPLOYMENT = "Replica"
#: Seconds of replica counters each autoscaling decision reads (Ray's ``look_back_period_s``).
LOOKBACK_S = 10.0
#: Seconds a lower target must hold before Ray removes a replica (the simulation's ``down_s``).
DOWNSCALE_DELAY_S = 30.0
#: How often a replica pushes its counters to the autoscaler (seconds; Ray's default is 10).
PUSH_S = 1.0
#: How often a replica refreshes the replica count it shows in ``/metrics`` (seconds).
COUNT_S = 2.0
NEEDS_RAY = 'serve needs ray: pip install "rsvision[ray]"'
#: The counters a replica reports, cumulative since it started.
COUNTERS = ("routed", "shed", "batches", "below_top", "busy_ms")


def window_signals(series: Mapping[str, Mapping[Any, Sequence[tuple[float, float]]]], replicas: int, ongoing: float) -> Signals:
    """The SLO signals of a look-back window from the replicas' cumulative counters.

    ``series[counter][replica]``: ``(time_s, value)`` samples in time order. A counter's
    count over the window is, per replica, its last sample minus its first (0 for a replica
    that restarted in the window), summed over the replicas; the busy share is the busy
    milliseconds over the milliseconds the replicas' samples span."""

    def count(counter: str) -> float:
        return sum(max(0.0, points[-1][1] - points[0][1]) for points in series.get(counter, {}).values() if points)

    span_ms = sum(1000.0 * (points[-1][0] - points[0][0]) for points in series.get("busy_ms", {}).values() if points)
    return Signals(routed=round(count("routed")), shed=round(count("shed")), batches=round(count("batches")),
                   below_top=round(count("below_top")), utilisation=count("busy_ms") / span_ms if span_ms > 0 else 0.0,
                   ongoing=ongoing, replicas=replicas)


def decide(policy: DegradeThenScale, series: Mapping[str, Mapping[Any, Sequence[tuple[float, float]]]], *, current: int, target: int,
           ongoing: float, now: float, last_change: float | None, lookback_s: float) -> int:
    """The replica count to aim for (module docstring): ``target`` unchanged while the
    ``current`` running replicas differ from it (replicas starting or stopping) or less than
    ``lookback_s`` has passed since ``last_change`` (the window would mix two counts), else
    the policy's target on :func:`window_signals`. Bounds are Ray's to apply."""
    if current != target:
        return target
    if last_change is not None and now - last_change < lookback_s:
        return target
    return policy.target(window_signals(series, current, ongoing))


def slo_policy(ctx) -> tuple[int, dict]:
    """Ray Serve's custom autoscaling policy (``AutoscalingPolicy(policy_function=...)``): :func:`decide`
    with :class:`DegradeThenScale`'s defaults on the replicas' counters of the look-back."""
    raw = ctx.raw_metrics or {}
    series = {counter: {replica: [(p.timestamp, p.value) for p in points] for replica, points in per.items()} for counter, per in raw.items()}
    changes = [t for t in (ctx.last_scale_up_time, ctx.last_scale_down_time) if t is not None]
    count = decide(DegradeThenScale(), series, current=ctx.current_num_replicas, target=ctx.target_num_replicas,
                   ongoing=ctx.total_num_requests, now=ctx.current_time if ctx.current_time is not None else time.time(),
                   last_change=max(changes, default=None), lookback_s=ctx.config.look_back_period_s)
    return count, ctx.policy_state


class Tally:
    """A replica's executor that counts what the autoscaler reads: batches, those below the
    most accurate sub-network of the scheduler, and busy milliseconds. It counts from the
    moment its worker is ready: the runs that measure the latency table are not batches."""

    def __init__(self, executor, clock=monotonic_ms) -> None:
        self.executor, self.clock = executor, clock
        self.worker = None
        self.batches = self.below_top = 0
        self.busy_ms = 0.0

    def start(self) -> None:
        self.executor.start()

    def run(self, subnet: str, images):
        start = self.clock()
        try:
            return self.executor.run(subnet, images)
        finally:
            if self.worker is not None and self.worker.ready.is_set():
                self.batches += 1
                self.below_top += subnet != self.worker.scheduler.subnets[0]
                self.busy_ms += self.clock() - start

    def close(self) -> None:
        self.executor.close()


class Replica:
    """One replica: a Runner, its worker and the server's FastAPI application (module docstring).

    Wrapped by ``serve.ingress()`` in :func:`start`; Ray calls ``__serve_build_asgi_app__``
    after the constructor and runs the application's lifespan (the latency table) before
    the replica takes requests."""

    def __init__(self, source: str, config, device: str | None, name: str | None, plugins: tuple[str, ...]) -> None:
        from rsvision.deploy.load import load
        from rsvision.registry import load_plugins
        from rsvision.serve.app import create_app
        from rsvision.serve.executor import ChildProcess, InThread
        from rsvision.serve.runner import Runner

        load_plugins(plugins)
        if config.worker == "process":
            runner = Runner(load(source), name, config.threads)
            self.tally = Tally(ChildProcess(source, device, name, config.threads, plugins))
        else:
            runner = Runner(load(source) if device is None else load(source, device), name, config.threads)
            self.tally = Tally(InThread(runner))
        self._app = create_app(runner, config, executor=self.tally)
        self.tally.worker = self._app.state.worker
        self._replicas = self._replica_gauge()

    def _replica_gauge(self):
        from prometheus_client import Gauge

        gauge = Gauge("rsvision_replicas", "Running replicas of the Ray Serve deployment (refreshed every few seconds; 0 until the first look).",
                      registry=self._app.state.metrics.registry)

        def refresh() -> None:  # Serve's status is a call to its controller: off the event loop
            from ray import serve

            while True:
                try:
                    states = serve.status().applications[APP].deployments[DEPLOYMENT].replica_states
                    gauge.set(states.get("RUNNING", 0))
                except Exception:  # the controller is busy or shutting down: keep the last count
                    pass
                time.sleep(COUNT_S)

        threading.Thread(target=refresh, name="rsvision-replica-count", daemon=True).start()
        return gauge

    def __serve_build_asgi_app__(self):
        return self._app

    def record_autoscaling_stats(self) -> dict[str, float]:
        """The cumulative counters of :data:`COUNTERS` (module docstring)."""
        registry = self._app.state.metrics.registry
        shed = sum(registry.get_sample_value("rsvision_drops_total", {"reason": r}) or 0.0 for r in (HOPELESS, QUEUE_FULL))
        return {"routed": registry.get_sample_value("rsvision_requests_total") or 0.0, "shed": shed,
                "batches": float(self.tally.batches), "below_top": float(self.tally.below_top), "busy_ms": self.tally.busy_ms}


def check(source: Path, config, name: str | None) -> None:
    """The errors every replica would hit, as one line before Ray starts: the source cannot be
    loaded, or the policy names no sub-network of it (a replica's failure surfaces from Ray late
    and wordy)."""
    from rsvision.deploy.load import load
    from rsvision.serve.runner import Runner
    from rsvision.serve.scheduler import parse_policy

    parse_policy(config.policy, list(Runner(load(source), name, config.threads).subnets))


def _ray():
    try:
        import ray
        from ray import serve
    except ModuleNotFoundError:
        raise UserError(NEEDS_RAY) from None
    return ray, serve


def start(source: str | Path, config, *, host: str, port: int, device: str | None = None, name: str | None = None,
          plugins: Sequence[str | Path] = (), min_replicas: int = 1, max_replicas: int = 1, address: str | None = None) -> str:
    """Deploy ``source`` on Ray Serve at ``http://host:port`` (module docstring) and return
    that URL once every first replica has measured its latency table. Joins the Ray cluster
    at ``address`` (``auto``: the one ``ray start`` runs on this machine) or, without one and
    unless Ray is already initialised here, starts a local Ray instance."""
    ray, serve = _ray()
    if not 1 <= min_replicas <= max_replicas:
        raise UserError(f"--min-replicas {min_replicas} --max-replicas {max_replicas}: expected 1 <= min <= max")
    config.check()
    source = Path(source)
    check(source, config, name)
    if port == 0:  # any free port: Serve's proxy needs a number
        from rsvision.serve.app import listen

        with listen(host, 0) as sock:
            port = sock.getsockname()[1]
    if not ray.is_initialized():  # a local instance on loopback, or the cluster at --address
        # A local instance's workers are the server: at the priority of the command, not Ray's default nice 15.
        local = ({"address": "local", "_node_ip_address": "127.0.0.1", "_system_config": {"worker_niceness": 0}} if address is None
                 else {"address": address})
        ray.init(**local, include_dashboard=False, log_to_driver=False, logging_level="error")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its start-up lines; the replicas' logs stay in Ray's log folder
    quiet = {"enable_access_log": False, "log_level": "WARNING"}  # a log line per request costs the proxy and the replicas CPU
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    sizes = config.batch_sizes
    deployment = serve.deployment(serve.ingress()(Replica)).options(
        name=DEPLOYMENT,
        max_ongoing_requests=config.max_queue + max(sizes),
        max_queued_requests=max(sizes),
        logging_config=quiet,
        ray_actor_options={"num_cpus": config.threads or 1},
        autoscaling_config={
            "min_replicas": min_replicas, "max_replicas": max_replicas, "initial_replicas": min_replicas,
            "look_back_period_s": LOOKBACK_S, "metrics_interval_s": PUSH_S, "upscale_delay_s": 0.0, "downscale_delay_s": DOWNSCALE_DELAY_S,
            "policy": {"policy_function": "rsvision.serve.ray_engine:slo_policy"},
        },
    )
    app = deployment.bind(str(source.resolve()), replace(config, on_ready=None), device, name, tuple(str(p) for p in plugins))
    try:
        serve.run(app, name=APP, route_prefix="/")
    except RuntimeError as exc:  # a replica's constructor or lifespan failed: name its error, the traceback's last "...Error: " line
        stop()
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        cause = next((line for line in reversed(lines) if re.match(r"[\w.]*(Error|Exception): ", line)), lines[-1] if lines else "")
        raise UserError(f"{source}: the Ray Serve deployment did not start ({cause})") from None
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def stop() -> None:
    """Shut Serve down (replicas answer what they hold first) and leave Ray."""
    ray, serve = _ray()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def serve_ray(source: str | Path, config, *, host: str, port: int, device: str | None = None, name: str | None = None,
              plugins: Sequence[str | Path] = (), min_replicas: int = 1, max_replicas: int = 1, address: str | None = None) -> None:
    """:func:`start`, then ``config.on_ready`` with a replica's ``/info`` and the URL, then
    serve until SIGTERM or SIGINT, then :func:`stop`."""
    import httpx

    url = start(source, config, host=host, port=port, device=device, name=name, plugins=plugins,
                min_replicas=min_replicas, max_replicas=max_replicas, address=address)
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if config.on_ready is not None:
            config.on_ready({**httpx.get(f"{url}/info", timeout=60).json(), "url": url})
        while not stopping.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop()
