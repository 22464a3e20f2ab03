"""The HTTP server: FastAPI routes, the worker thread that runs the batches, Prometheus metrics.

A request's path:

1. ``POST /predict`` (or ``POST /v2/models/{name}/infer``, the KServe v2 / Open Inference
   Protocol route) notes its arrival and deadline (arrival + SLO, or the tighter
   ``X-Deadline-Ms`` header, milliseconds after arrival) and refuses at once what it cannot
   take: a body over the size limit (413), a wrong content type (415), a queue that is full
   or a deadline that cannot be met (503 with ``Retry-After``).
2. The body is decoded in a thread pool, off the event loop (:meth:`Runner.prepare`): what
   is not an image, is truncated, or has too many pixels is answered 4xx here, before it
   takes a place in the queue, and decoding runs beside the network on another core.
3. The image joins the scheduler's queue (:mod:`rsvision.serve.scheduler`) with an asyncio
   future. ONE worker thread loops: take a batch from the scheduler, hand it to the executor
   (:mod:`rsvision.serve.executor`: ``rsvision serve`` runs the network in a process of its
   own, with its own intra-op threads and interpreter), set the futures through
   ``loop.call_soon_threadsafe``; requests the scheduler sheds are answered 503 the same
   way. The event loop only accepts, refuses and answers, so it stays responsive under
   overload, and the network's time does not depend on it.
4. The answer is the prediction's fields (those of ``rsvision.load(...).predict``) plus the
   sub-network used and the time spent decoding, queued and computing.

At start-up the worker measures the latency table over its whole path (the executor's
``run`` on copies of :meth:`Runner.probe`: hand-over, view, network, answer fields) before
the server accepts connections. Every refusal is a 4xx
with one JSON line, ``{"error": "..."}``; the server goes on answering the others.
``/metrics`` gives requests, answers per sub-network, a latency histogram, deadline misses,
drops, the queue length, the chosen sub-network and the latency table; ``GET /`` is a live
page drawn from ``GET /live.json`` (:mod:`rsvision.serve.live`). On SIGTERM uvicorn
stops accepting, the requests in flight (queued ones included) are answered, and the worker
stops: :func:`serve` returns and the command exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from rsvision.analysis.latency import REPEATS, WARMUP, median_ms, torch_threads
from rsvision.errors import UserError
from rsvision.serve.decode import BadInput, body_kind
from rsvision.serve.executor import ChildProcess, InThread, WorkerDied
from rsvision.serve.live import LiveWindows
from rsvision.serve.runner import Prepared, Runner
from rsvision.serve.scheduler import (
    ADAPTIVE,
    HOPELESS,
    LatencyTable,
    Request as Queued,
    Scheduler,
    monotonic_ms,
    parse_policy,
)

HOST = "127.0.0.1"
WORKERS = ("process", "thread")
PORT = 8000
DEADLINE_HEADER = "X-Deadline-Ms"
#: Latency histogram buckets (seconds); the SLO is added to them.
BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
#: The live page served at ``GET /`` (package data).
LIVE_PAGE = Path(__file__).with_name("static") / "live.html"


@dataclass
class ServeConfig:
    """How the server schedules and what it accepts (the ``rsvision serve`` options)."""

    slo_ms: float = 50.0
    policy: str = ADAPTIVE
    max_queue: int = 64
    max_body_mb: float = 20.0
    max_megapixels: float = 25.0
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    threads: int | None = None
    margin_ms: float = 2.0
    #: Where :func:`serve` runs the network: ``process`` (its own, :class:`ChildProcess`) or ``thread``.
    worker: str = "process"
    repeats: int = REPEATS
    warmup: int = WARMUP
    #: Called once the latency table is measured, with :meth:`Worker.describe`.
    on_ready: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)

    def check(self) -> None:
        """One-line errors naming the option for values that cannot work."""
        for option, value in (("--slo-ms", self.slo_ms), ("--max-body-mb", self.max_body_mb), ("--max-megapixels", self.max_megapixels)):
            if not value > 0 or value == math.inf:
                raise UserError(f"{option} {value}: expected a positive number")
        if self.margin_ms < 0:
            raise UserError(f"--margin-ms {self.margin_ms}: expected 0 or more")
        if self.max_queue < 1:
            raise UserError(f"--max-queue {self.max_queue}: expected at least 1")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads}: expected at least 1")
        if self.worker not in WORKERS:
            raise UserError(f"--worker {self.worker}: expected one of {', '.join(WORKERS)}")


class Metrics:
    """The Prometheus metrics of one server, in a registry of its own."""

    def __init__(self, slo_ms: float, batch_sizes: tuple[int, ...]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rsvision_requests", "Images asked for a prediction (each image of a v2 request counts).", registry=r)
        self.answers = Counter("rsvision_answers", "Predictions answered, per sub-network.", ["subnet"], registry=r)
        self.bad = Counter("rsvision_bad_requests", "Requests refused with a 4xx, per status.", ["status"], registry=r)
        self.drops = Counter("rsvision_drops", "Requests shed with a 503: deadline (it can no longer be met) or queue_full.", ["reason"], registry=r)
        self.misses = Counter("rsvision_deadline_misses", "Predictions answered after their deadline.", registry=r)
        buckets = sorted(set(BUCKETS) | {slo_ms / 1000})
        self.latency = Histogram("rsvision_latency_seconds", "Arrival to answer, per answered prediction.", buckets=buckets, registry=r)
        self.batch = Histogram("rsvision_batch_size", "Requests per batch run.", buckets=sorted(set(batch_sizes)), registry=r)
        self.queue = Gauge("rsvision_queue_length", "Requests waiting for the worker.", registry=r)
        self.chosen = Gauge("rsvision_chosen_subnet", "1 for the sub-network of the latest batch, 0 for the others.", ["subnet"], registry=r)
        self.table = Gauge("rsvision_latency_table_ms", "The scheduler's latency table: ms per batch, per sub-network and batch size.", ["subnet", "batch"], registry=r)


@dataclass
class Job:
    """What a queued request carries: its image and the future its handler awaits."""

    prepared: Prepared
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued: float


@dataclass(frozen=True)
class Answered:
    """A prediction's JSON fields and how it was made (times on the scheduler's clock, ms)."""

    fields: dict[str, Any]
    subnet: str
    batch_size: int
    start: float
    end: float


@dataclass(frozen=True)
class Dropped:
    reason: str


@dataclass(frozen=True)
class Failed:
    message: str


def _settle(future: asyncio.Future, outcome: Any) -> None:
    if not future.done():  # the handler may be gone (client disconnected, shutdown)
        future.set_result(outcome)


class Worker:
    """The thread that measures the latency table, then runs the scheduler's batches on ``executor``."""

    def __init__(self, runner: Runner, config: ServeConfig, metrics: Metrics, clock: Callable[[], float], executor=None) -> None:
        self.runner, self.config, self.metrics, self.clock = runner, config, metrics, clock
        self.executor = executor if executor is not None else InThread(runner)
        self.allowed = parse_policy(config.policy, list(runner.subnets))  # checked before any measuring
        self.scheduler: Scheduler | None = None
        self.lock = threading.Condition()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._main, name="rsvision-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Run what is still queued, then end the thread."""
        with self.lock:
            self._stop = True
            self.lock.notify_all()
        self._thread.join()

    def admits(self, deadline: float) -> str | None:
        with self.lock:
            return self.scheduler.admits(deadline)

    def submit(self, request: Queued) -> str | None:
        with self.lock:
            if self.error is not None:  # the worker is gone: nothing would answer it
                raise RuntimeError(f"the worker stopped: {type(self.error).__name__}: {self.error}")
            reason = self.scheduler.submit(request)
            if reason is None:
                self.lock.notify()
            self.metrics.queue.set(len(self.scheduler))
            return reason

    def observe_handover(self, ms: float) -> None:
        with self.lock:
            self.scheduler.observe_handover(ms)

    def describe(self) -> dict[str, Any]:
        with self.lock:
            table, planned = self.scheduler.table.as_dict(), self.scheduler.table.planned()
            order = list(self.scheduler.subnets)
            reserve = self.scheduler.reserve
        return {
            **self.runner.describe(),
            "policy": self.config.policy,
            "order": order,
            "slo_ms": self.config.slo_ms,
            "margin_ms": self.config.margin_ms,
            "reserve_ms": reserve,
            "batch_sizes": list(self.config.batch_sizes),
            "max_queue": self.config.max_queue,
            "threads": self.config.threads or torch.get_num_threads(),
            "latency_ms": {s: {str(b): ms for b, ms in row.items()} for s, row in table.items()},
            "planned_ms": {s: {str(b): ms for b, ms in row.items()} for s, row in planned.items()},
        }

    def _main(self) -> None:
        try:
            self._serve()
        finally:
            self.executor.close()

    def _serve(self) -> None:
        try:
            with torch_threads(self.config.threads):
                self.executor.start()
                table = self._measure()
                ranked = [s for s in self.runner.ranked(table) if s in self.allowed]
                self.scheduler = Scheduler(ranked, LatencyTable(table), max_queue=self.config.max_queue, margin_ms=self.config.margin_ms, clock=self.clock)
                self._show_table()
                self.ready.set()
                self._loop()
        except BaseException as exc:
            self.error = exc
            if not self.ready.is_set():  # the start-up reports it
                self.ready.set()
                return
            with self.lock:  # a fault of the worker itself: answer what waits, take nothing more
                self._stop = True
                for request in self.scheduler.drain():
                    job: Job = request.payload
                    job.loop.call_soon_threadsafe(_settle, job.future, Failed(f"the worker stopped: {type(exc).__name__}: {exc}"))
            raise

    def _measure(self) -> dict[str, dict[int, float]]:
        """``lat[s][b]``: the median time of the executor's ``run`` on ``b`` copies of the probe (ms)."""
        probe = self.runner.probe()
        return {
            s: {b: median_ms(lambda s=s, b=b: self.executor.run(s, [probe] * b), self.config.repeats, self.config.warmup) for b in self.config.batch_sizes}
            for s in self.runner.subnets
        }

    def _loop(self) -> None:
        while True:
            with self.lock:
                while True:
                    dispatch = self.scheduler.dispatch()
                    self._drop(dispatch.dropped, HOPELESS)
                    self.metrics.queue.set(len(self.scheduler))
                    if dispatch.batch is not None or self._stop:
                        break
                    self.lock.wait()
            if dispatch.batch is None:
                return
            self._run(dispatch.batch)

    def _run(self, batch) -> None:
        jobs: list[Job] = [r.payload for r in batch.requests]
        try:
            start = self.clock()
            results = self.executor.run(batch.subnet, [j.prepared.image for j in jobs])
            end = self.clock()
        except BaseException as exc:  # a fault of this batch: answer 500 and go on (the worker's own: stop)
            for job in jobs:
                job.loop.call_soon_threadsafe(_settle, job.future, Failed(f"{type(exc).__name__}: {exc}"))
            if not isinstance(exc, Exception) or isinstance(exc, WorkerDied):
                raise
            return
        with self.lock:
            self.scheduler.observe(batch, end - start)
        self._show_table()
        self.metrics.batch.observe(len(jobs))
        for subnet in self.scheduler.subnets:
            self.metrics.chosen.labels(subnet).set(1 if subnet == batch.subnet else 0)
        for job, result in zip(jobs, results):
            job.loop.call_soon_threadsafe(_settle, job.future, Answered(result, batch.subnet, len(jobs), start, end))

    def _drop(self, requests: list[Queued], reason: str) -> None:
        for request in requests:
            job: Job = request.payload
            self.metrics.drops.labels(reason).inc()
            job.loop.call_soon_threadsafe(_settle, job.future, Dropped(reason))

    def _show_table(self) -> None:
        for subnet, row in self.scheduler.table.as_dict().items():
            for b, ms in row.items():
                self.metrics.table.labels(subnet, str(b)).set(ms)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413 (counted in
    ``counter``), by its Content-Length before any byte is read, or as soon as the bytes read
    pass the limit."""

    def __init__(self, app, max_bytes: int, counter: Counter) -> None:
        self.app, self.max_bytes, self.counter = app, max_bytes, counter

    def _message(self) -> str:
        return f"request body over the limit of {self.max_bytes / 2**20:g} MB (--max-body-mb)"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            self.counter.labels("413").inc()
            return await _error(413, self._message())(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BadInput(413, self._message())
            return message

        await self.app(scope, limited, send)


def _deadline_ms(request: Request, slo_ms: float) -> float:
    """The time the request allows (ms after arrival): the SLO or the header's tighter one."""
    text = request.headers.get(DEADLINE_HEADER)
    if text is None:
        return slo_ms
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or value == math.inf:
        raise BadInput(400, f"header {DEADLINE_HEADER}: expected a positive number of milliseconds, got {text!r}")
    return min(value, slo_ms)


async def _image_body(request: Request) -> bytes:
    """The image file of a request: its body, or the first file field of a multipart form."""
    if body_kind(request.headers.get("content-type")) == "raw":
        return await request.body()
    try:
        form = await request.form()
    except Exception as exc:  # python-multipart's parse errors
        raise BadInput(400, f"multipart body: cannot parse it ({type(exc).__name__}: {exc})") from None
    try:
        upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
        if upload is None:
            raise BadInput(400, "multipart body: no file field; send the image as one, e.g. curl -F file=@img.png")
        return await upload.read()
    finally:
        await form.close()


def create_app(runner: Runner, config: ServeConfig | None = None, clock: Callable[[], float] = monotonic_ms, executor=None) -> FastAPI:
    """The FastAPI application serving ``runner`` (module docstring); its batches run on
    ``executor`` (default: :class:`InThread`, in the worker thread). The worker starts with
    the application's lifespan: its latency table is measured before the first request."""
    config = config or ServeConfig()
    config.check()
    metrics = Metrics(config.slo_ms, config.batch_sizes)
    worker = Worker(runner, config, metrics, clock, executor)
    max_pixels = int(config.max_megapixels * 1e6)
    decoders = anyio.CapacityLimiter(os.cpu_count() or 1)
    retry_after = {"Retry-After": str(max(1, math.ceil(config.slo_ms / 1000)))}
    state = {"accepting": False}
    live = LiveWindows(config.slo_ms, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        for sample in runner.samples():  # the first request should not pay for Pillow's set-up and the pool's threads
            await anyio.to_thread.run_sync(runner.prepare, sample, max_pixels, limiter=decoders)
        await anyio.to_thread.run_sync(worker.ready.wait)
        if worker.error is not None:
            raise RuntimeError(f"the serving worker failed at start-up: {type(worker.error).__name__}: {worker.error}") from worker.error
        if config.on_ready is not None:
            config.on_ready(worker.describe())
        state["accepting"] = True
        try:
            yield
        finally:
            state["accepting"] = False
            await anyio.to_thread.run_sync(worker.stop)

    app = FastAPI(title="rsvision serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    app.state.metrics = metrics
    app.state.live = live

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        metrics.bad.labels(str(exc.status)).inc()
        return _error(exc.status, exc.message)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        """The client left while sending its body: nobody will read the answer (nginx's 499)."""
        metrics.bad.labels("499").inc()
        return _error(499, "the client closed the connection before its body arrived")

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"{type(exc).__name__}: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.bad.labels(str(exc.status_code)).inc()
        if exc.status_code == 404:
            return _error(404, f"no route {request.method} {request.url.path} (routes: POST /predict, GET /healthz, GET /readyz, GET /metrics, GET /info, /v2/...)")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed on {request.url.path}")
        return _error(exc.status_code, str(exc.detail))

    async def predict_one(prepared: Prepared, arrival: float, deadline: float, queued: float) -> tuple[Answered | None, JSONResponse | None]:
        """Queue one prepared image and wait for its answer (or its 503)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        reason = worker.submit(Queued(arrival, deadline, Job(prepared, future, loop, queued)))
        if reason is not None:
            metrics.drops.labels(reason).inc()
        else:
            outcome = await future
            if isinstance(outcome, Answered):
                done = clock()
                worker.observe_handover(done - outcome.end)
                metrics.answers.labels(outcome.subnet).inc()
                metrics.latency.observe((done - arrival) / 1000)
                live.answered(done, done - arrival, outcome.subnet)
                if done > deadline:
                    metrics.misses.inc()
                return outcome, None
            if isinstance(outcome, Failed):
                return None, _error(500, f"the batch failed: {outcome.message}")
            reason = outcome.reason
        live.dropped(clock())
        why = "it cannot be answered within its deadline" if reason == HOPELESS else f"the queue is full ({config.max_queue} requests)"
        return None, _error(503, f"dropped: {why}; retry later", retry_after)

    def refusal(deadline: float) -> JSONResponse | None:
        if worker.error is not None:
            return _error(500, f"the worker stopped: {type(worker.error).__name__}: {worker.error}")
        if not state["accepting"]:
            return _error(503, "the server is starting or shutting down", retry_after)
        reason = worker.admits(deadline)
        if reason is None:
            return None
        metrics.drops.labels(reason).inc()
        live.dropped(clock())
        why = "it cannot be answered within its deadline" if reason == HOPELESS else f"the queue is full ({config.max_queue} requests)"
        return _error(503, f"dropped: {why}; retry later", retry_after)

    def timing(outcome: Answered, arrival: float, queued: float) -> dict[str, Any]:
        subnet = runner.subnets[outcome.subnet]
        return {
            "subnet": outcome.subnet,
            "resolution": subnet.resolution,
            **({"width": subnet.width} if subnet.width is not None else {}),
            "batch_size": outcome.batch_size,
            "decode_ms": queued - arrival,
            "queue_ms": outcome.start - queued,
            "compute_ms": outcome.end - outcome.start,
            "latency_ms": clock() - arrival,
        }

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        arrival = clock()
        metrics.requests.inc()
        live.arrived(arrival)
        deadline = arrival + _deadline_ms(request, config.slo_ms)
        body_kind(request.headers.get("content-type"))
        refused = refusal(deadline)
        if refused is not None:
            return refused
        body = await _image_body(request)
        prepared = await anyio.to_thread.run_sync(runner.prepare, body, max_pixels, limiter=decoders)
        queued = clock()
        outcome, refused = await predict_one(prepared, arrival, deadline, queued)
        if refused is not None:
            return refused
        return JSONResponse({**outcome.fields, **timing(outcome, arrival, queued)})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        if state["accepting"]:
            return JSONResponse({"status": "ready", "queue": len(worker.scheduler)})
        return _error(503, "not ready: the server is starting or shutting down")

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/")
    async def live_page() -> Response:
        """The live page: draws ``/live.json`` every second (rsvision/serve/static/live.html)."""
        return HTMLResponse(LIVE_PAGE.read_text(encoding="utf-8"))

    @app.get("/live.json")
    async def live_json() -> dict[str, Any]:
        """The last minutes in one-second windows (:mod:`rsvision.serve.live`)."""
        return live.snapshot(worker.scheduler.subnets if worker.scheduler is not None else ())

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return worker.describe()

    # KServe v2 / Open Inference Protocol.
    def model_named(name: str) -> None:
        if name != runner.name:
            raise BadInput(404, f"no model {name!r} (this server holds {runner.name!r})")

    @app.get("/v2")
    async def v2_server() -> dict[str, Any]:
        return {"name": "rsvision", "version": "2", "extensions": []}

    @app.get("/v2/health/live")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready() -> Response:
        return JSONResponse({"ready": state["accepting"]}, status_code=200 if state["accepting"] else 503)

    @app.get("/v2/models/{name}")
    async def v2_metadata(name: str) -> dict[str, Any]:
        model_named(name)
        outputs = ([{"name": "index", "datatype": "INT64", "shape": [-1]}, {"name": "probability", "datatype": "FP32", "shape": [-1]},
                    {"name": "name", "datatype": "BYTES", "shape": [-1]}] if runner.kind == "classification"
                   else [{"name": "prediction", "datatype": "BYTES", "shape": [-1]}])
        return {
            "name": runner.name,
            "versions": [],
            "platform": f"rsvision_{runner.backend}",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs + [{"name": "subnet", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"task": runner.model.task, "kind": runner.kind},
        }

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(name: str) -> Response:
        model_named(name)
        return JSONResponse({"name": name, "ready": state["accepting"]}, status_code=200 if state["accepting"] else 503)

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(name: str, request: Request) -> Response:
        arrival = clock()
        model_named(name)
        deadline = arrival + _deadline_ms(request, config.slo_ms)
        bodies, request_id = _v2_images(await request.body())
        metrics.requests.inc(len(bodies))
        live.arrived(arrival, len(bodies))
        refused = refusal(deadline)
        if refused is not None:
            return refused
        prepared = []
        for i, body in enumerate(bodies):
            item = await anyio.to_thread.run_sync(_prepare_item, runner, body, max_pixels, i, limiter=decoders)
            prepared.append(item)
        queued = clock()
        settled = await asyncio.gather(*(predict_one(p, arrival, deadline, queued) for p in prepared))
        refused = next((r for _, r in settled if r is not None), None)
        if refused is not None:
            return refused
        outcomes = [o for o, _ in settled]
        answers = [o.fields for o in outcomes]
        n = len(answers)
        if runner.kind == "classification":
            outputs = [
                {"name": "index", "datatype": "INT64", "shape": [n], "data": [a["index"] for a in answers]},
                {"name": "probability", "datatype": "FP32", "shape": [n], "data": [a["probability"] for a in answers]},
                {"name": "name", "datatype": "BYTES", "shape": [n], "data": [a["name"] for a in answers]},
            ]
        else:
            outputs = [{"name": "prediction", "datatype": "BYTES", "shape": [n], "data": [json.dumps(a) for a in answers]}]
        outputs.append({"name": "subnet", "datatype": "BYTES", "shape": [n], "data": [o.subnet for o in outcomes]})
        timings = [timing(o, arrival, queued) for o in outcomes]
        return JSONResponse({
            "model_name": runner.name,
            **({"id": request_id} if request_id is not None else {}),
            "outputs": outputs,
            "parameters": {"latency_ms": max(t["latency_ms"] for t in timings), "compute_ms": max(t["compute_ms"] for t in timings)},
        })

    app.add_middleware(BodyLimit, max_bytes=int(config.max_body_mb * 2**20), counter=metrics.bad)
    return app


def _prepare_item(runner: Runner, item: bytes | np.ndarray, max_pixels: int, index: int) -> Prepared:
    if isinstance(item, np.ndarray):  # UINT8 pixels, H x W x C
        height, width = item.shape[:2]
        if height * width > max_pixels:
            raise BadInput(413, f"inputs[0] image {index}: {width}x{height} is over the limit of {max_pixels / 1e6:g} Mpixel")
        return runner.prepare_pixels(item)
    return runner.prepare(item, max_pixels)


def _v2_images(body: bytes) -> tuple[list[bytes | np.ndarray], Any]:
    """The images of a v2 inference request: one input, either ``BYTES`` (each element an
    image file, base64-encoded) or ``UINT8`` pixels shaped ``[H, W, C]`` or ``[N, H, W, C]``."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(400, f"v2 request: not JSON ({exc})") from None
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInput(400, "v2 request: expected {\"inputs\": [one tensor]} holding the images")
    tensor = inputs[0]
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not all(isinstance(v, int) and v > 0 for v in shape) or not isinstance(data, list):
        raise BadInput(400, "v2 request: inputs[0] needs a shape of positive integers and a data list")
    if datatype == "BYTES":
        if len(data) != math.prod(shape) or not all(isinstance(v, str) for v in data):
            raise BadInput(400, f"v2 request: inputs[0] BYTES: expected {math.prod(shape)} base64 strings (one image file each)")
        try:
            images = [base64.b64decode(v, validate=True) for v in data]
        except binascii.Error as exc:
            raise BadInput(400, f"v2 request: inputs[0] BYTES: not base64 ({exc})") from None
    elif datatype == "UINT8":
        if len(shape) not in (3, 4) or shape[-1] not in (1, 3, 4):
            raise BadInput(400, f"v2 request: inputs[0] UINT8: expected a shape [H, W, C] or [N, H, W, C] with C 1, 3 or 4, got {shape}")
        try:
            array = np.asarray(data, dtype=np.uint8).reshape(shape)
        except (ValueError, OverflowError, TypeError):
            raise BadInput(400, f"v2 request: inputs[0] UINT8: {len(data)} values do not fill the shape {shape} with 0..255") from None
        images = list(array if array.ndim == 4 else array[None])
    else:
        raise BadInput(400, f"v2 request: inputs[0] datatype {datatype!r}: expected BYTES (image files, base64) or UINT8 (pixels)")
    if not images:
        raise BadInput(400, "v2 request: no image")
    return images, payload.get("id")


def _ignore_signal(signum, frame) -> None:
    """uvicorn raises the signal it shut down on again once it is done; here it has done its work."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except OSError as exc:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    return sock


def serve(
    source: str | Path,
    config: ServeConfig | None = None,
    *,
    host: str = HOST,
    port: int = PORT,
    device: str | torch.device | None = None,
    name: str | None = None,
    log_level: str = "warning",
    plugins: Sequence[str | Path] = (),
) -> None:
    """Serve a run folder, packed file or ONNX export (read by :func:`rsvision.load`, the model
    on ``device``) on ``host:port`` (0: any free port) until SIGTERM or SIGINT; then finish the
    requests in flight and return (module docstring). With ``config.worker`` ``process`` the
    network runs in a child process that loads the model on ``device`` (this process keeps a
    copy on the CPU for decoding and describing; the child loads ``plugins`` first). ``config.on_ready`` gets
    :meth:`Worker.describe` with the ``url`` once the latency table is measured."""
    from rsvision.deploy.load import load

    config = config or ServeConfig()
    config.check()
    sock = listen(host, port)  # before the model loads: a taken port fails at once
    try:
        if config.worker == "process":
            runner = Runner(load(source), name, config.threads)
            executor = ChildProcess(source, device, name, config.threads, plugins)
        else:
            runner = Runner(load(source) if device is None else load(source, device), name, config.threads)
            executor = InThread(runner)
        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        announce = config.on_ready
        app = create_app(runner, replace(config, on_ready=lambda info: announce({**info, "url": url}) if announce else None), executor=executor)
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30, lifespan="on"))
        previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        sock.close()
    if not server.started:
        error = app.state.worker.error
        if isinstance(error, UserError):
            raise error
        raise UserError(f"{source}: the server did not start ({type(error).__name__}: {error})" if error else f"{source}: the server did not start")
