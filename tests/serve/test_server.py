"""The server over real HTTP on loopback: answers like rsvision.load, refuses bad input with one
JSON line and goes on answering, sheds overload with a bounded queue, and drains on SIGTERM.

Servers run in a thread (uvicorn on a socket bound to a free port here) or, for SIGTERM, in
a subprocess; every test starts and stops its own.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from calib_fixtures import run_cli
from deploy_fixtures import cls_run
from PIL import Image

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import rsvision  # noqa: E402
from rsvision.serve.app import ServeConfig, create_app, listen  # noqa: E402
from rsvision.serve.runner import Runner  # noqa: E402

FAST = {"repeats": 3, "warmup": 1, "threads": 1, "slo_ms": 5000}  # a shared CPU: no deadline pressure unless a test makes it


def _array(seed: int = 0, h: int = 30, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _huge_png_header(width: int = 10_000, height: int = 10_000) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (with valid CRC), over a tiny image's data."""
    small = _encoded(Image.fromarray(_array()))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return small[:8] + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk)) + small[8 + 25:]


@contextmanager
def running(runner: Runner, **config):
    """``runner`` served in a thread on a free loopback port; yields an httpx client."""
    app = create_app(runner, ServeConfig(**{**FAST, **config}))
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.05)
    assert server.started, "the server did not start"
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive()


def _metric(client, name: str) -> dict[str, float]:
    """``{labels: value}`` of a metric in /metrics (labels as their text, '' for none)."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, value = line.rsplit(" ", 1)
            out[key[len(name):].strip("{}")] = float(value)
    return out


def _one_json_line(response) -> str:
    assert "\n" not in response.text.strip()
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return cls_run(tmp_path_factory)


def test_answers_as_rsvision_load(run, tmp_path):
    model = rsvision.load(run)
    arrays = [_array(seed) for seed in range(3)]
    with running(Runner(model), policy="fixed:16") as client:
        for array in arrays:
            expected = model.predict(array)  # the largest sub-network, 16
            png = _encoded(Image.fromarray(array))
            raw = client.post("/predict", content=png, headers={"content-type": "image/png"})
            form = client.post("/predict", files={"file": ("img.png", png, "image/png")})
            for response in (raw, form):
                assert response.status_code == 200, response.text
                answer = response.json()
                assert (answer["index"], answer["name"], answer["subnet"], answer["resolution"]) == (expected.index, expected.name, "16", 16)
                assert answer["probability"] == pytest.approx(expected.probability, abs=1e-5)
                assert answer["batch_size"] == 1 and answer["compute_ms"] > 0 and answer["queue_ms"] >= 0
        # KServe v2: the same image as a base64 file and as pixels.
        meta = client.get(f"/v2/models/{run.name}").json()
        assert meta["name"] == run.name and meta["inputs"][0]["datatype"] == "BYTES"
        png = _encoded(Image.fromarray(arrays[0]))
        files = {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [base64.b64encode(png).decode()] * 2}], "id": "a"}
        pixels = {"inputs": [{"name": "image", "shape": [30, 40, 3], "datatype": "UINT8", "data": arrays[0].ravel().tolist()}]}
        for request, n in ((files, 2), (pixels, 1)):
            v2 = client.post(f"/v2/models/{run.name}/infer", json=request)
            assert v2.status_code == 200, v2.text
            outputs = {o["name"]: o["data"] for o in v2.json()["outputs"]}
            assert outputs["index"] == [model.predict(arrays[0]).index] * n and outputs["subnet"] == ["16"] * n
        info = client.get("/info").json()
        assert info["order"] == ["16"] and set(info["latency_ms"]) == {"16", "8"} and set(info["latency_ms"]["16"]) == {"1", "2", "4", "8"}
    # 16-bit and RGBA files are converted as rsvision.load converts them.
    grey16 = Image.fromarray(np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 50)
    rgba = Image.fromarray(np.dstack([arrays[1], np.full((30, 40), 128, np.uint8)]))
    assert (grey16.mode, rgba.mode) == ("I;16", "RGBA")
    with running(Runner(model), policy="adaptive") as client:
        for image in (grey16, rgba, Image.fromarray(arrays[2])):
            path = tmp_path / f"{image.mode.replace(';', '')}.png"
            image.save(path)
            response = client.post("/predict", content=path.read_bytes())
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["index"] == model.predict(str(path), resolution=answer["subnet"]).index
            if answer["subnet"] == "16":
                assert answer["probability"] == pytest.approx(model.predict(str(path)).probability, abs=1e-5)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, as it reads the header
def test_bad_input_gets_one_json_line_and_the_server_goes_on(run):
    png = _encoded(Image.fromarray(_array()))
    jpeg = _encoded(Image.fromarray(_array(h=64, w=64)), "JPEG")
    cases = [
        ("not an image", {"content": b"hello, world"}, 400, "not an image"),
        ("truncated PNG", {"content": png[: len(png) // 2]}, 400, "truncated or corrupt PNG"),
        ("truncated JPEG", {"content": jpeg[: len(jpeg) // 2]}, 400, "truncated or corrupt JPEG"),
        ("empty body", {"content": b""}, 400, "empty"),
        ("wrong content type", {"content": png, "headers": {"content-type": "application/json"}}, 415, "content type application/json"),
        ("10,000 x 10,000", {"content": _huge_png_header()}, 413, "10000x10000 image (100.0 Mpixel) is over the limit of 25 Mpixel"),
        ("over --max-body-mb", {"content": os.urandom(300_000)}, 413, "over the limit of 0.25 MB"),
        ("over --max-body-mb, chunked", {"content": iter([os.urandom(100_000)] * 3)}, 413, "over the limit of 0.25 MB"),
        ("multipart without a file", {"content": b'--b\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n--b--\r\n',
                                      "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400, "no file field"),
        ("bad deadline header", {"content": png, "headers": {"X-Deadline-Ms": "soon"}}, 400, "X-Deadline-Ms"),
    ]
    with running(Runner(rsvision.load(run)), max_body_mb=0.25) as client:
        for name, request, status, words in cases:
            response = client.post("/predict", **request)
            assert response.status_code == status, (name, response.text)
            assert words in _one_json_line(response), name
            assert client.post("/predict", content=png).status_code == 200, f"after {name}"
        for method, path, request, status, words in [
            ("GET", "/nowhere", {}, 404, "no route GET /nowhere"),
            ("GET", "/predict", {}, 405, "GET is not allowed on /predict"),
            ("GET", "/v2/models/other", {}, 404, "no model 'other'"),
            ("POST", "/v2/models/other/infer", {"json": {}}, 404, "no model 'other'"),
            ("POST", f"/v2/models/{run.name}/infer", {"json": {"inputs": []}}, 400, "expected {\"inputs\": [one tensor]}"),
            ("POST", f"/v2/models/{run.name}/infer", {"json": {"inputs": [{"shape": [1], "datatype": "BYTES", "data": ["%%"]}]}}, 400, "not base64"),
        ]:
            response = client.request(method, path, **request)
            assert response.status_code == status and words in _one_json_line(response), (path, response.text)
        # A client that leaves halfway through its body: no traceback, counted as nginx's 499.
        with socket.create_connection(("127.0.0.1", client.base_url.port)) as raw:
            raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + png[:10])
        for _ in range(200):
            if _metric(client, "rsvision_bad_requests_total").get('status="499"'):
                break
            time.sleep(0.02)
        assert client.get("/healthz").json() == {"status": "ok"} and client.get("/readyz").status_code == 200
        assert client.post("/predict", content=png).status_code == 200
        bad = _metric(client, "rsvision_bad_requests_total")
        assert bad == {'status="400"': 8, 'status="415"': 1, 'status="413"': 3, 'status="404"': 3, 'status="405"': 1, 'status="499"': 1}


class SlowRunner(Runner):
    """Every batch takes 40 ms more: a network slow enough to overload from one client."""

    def run(self, subnet, images):
        time.sleep(0.04)
        return super().run(subnet, images)


def test_overload_is_shed_with_503_and_counted(run):
    png = _encoded(Image.fromarray(_array()))

    async def burst(url: str, n: int) -> list:
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=n)) as client:
            return await asyncio.gather(*(client.post("/predict", content=png) for _ in range(n)))

    # 40 requests at once against batches of at most 2 taking 40+ ms: the queue of 4 fills.
    with running(SlowRunner(rsvision.load(run)), slo_ms=1000, max_queue=4, batch_sizes=(1, 2)) as client:
        responses = asyncio.run(burst(str(client.base_url), 40))
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) == {200, 503} and statuses[200] >= 4, statuses
        for r in responses:
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "1" and "dropped" in _one_json_line(r)
        drops = _metric(client, "rsvision_drops_total")
        assert sum(drops.values()) == statuses[503] and drops['reason="queue_full"'] > 0 and set(drops) <= {'reason="queue_full"', 'reason="deadline"'}
        answers = _metric(client, "rsvision_answers_total")
        assert sum(answers.values()) == statuses[200]
        assert _metric(client, "rsvision_queue_length") == {"": 0.0}
        # A deadline tighter than any batch is shed at once, before decoding.
        tight = client.post("/predict", content=png, headers={"X-Deadline-Ms": "1"})
        assert tight.status_code == 503 and "within its deadline" in _one_json_line(tight)
        assert client.post("/predict", content=png).status_code == 200


class FaultyRunner(Runner):
    """A network that fails on a black image (a fault of the batch) and dies on a white one (a
    fault of the worker itself), once it is serving."""

    def run(self, subnet, images):
        if all(int(x.max()) == 0 for x in images):
            raise RuntimeError("out of memory")
        if all(int(x.min()) == 255 for x in images):
            raise SystemExit("gone")
        return super().run(subnet, images)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker thread's own report
def test_faults_are_answered_500_in_one_line(run):
    png = _encoded(Image.fromarray(_array()))
    black, white = (_encoded(Image.new("RGB", (20, 20), colour)) for colour in ("black", "white"))
    with running(FaultyRunner(rsvision.load(run)), batch_sizes=(1,)) as client:
        failed = client.post("/predict", content=black)
        assert failed.status_code == 500 and _one_json_line(failed) == "the batch failed: RuntimeError: out of memory"
        assert client.post("/predict", content=png).status_code == 200  # the worker goes on
        gone = client.post("/predict", content=white)
        assert gone.status_code == 500 and _one_json_line(gone) == "the batch failed: SystemExit: gone"
        after = client.post("/predict", content=png)  # nothing would answer it: refused, not left waiting
        assert after.status_code == 500 and "the worker stopped: SystemExit: gone" in _one_json_line(after)


_SLOW_SERVE = """
import sys, time
from rsvision.serve.app import Worker
run = Worker._run
def slow(self, batch):
    time.sleep(0.5)
    run(self, batch)
Worker._run = slow
from rsvision.cli import main
main(sys.argv[1:])
"""


def test_sigterm_answers_what_is_in_flight_then_exits_0(run):
    args = ["serve", str(run), "--port", "0", "--slo-ms", "5000", "--batch-sizes", "1", "--threads", "1", "--repeats", "1"]
    process = subprocess.Popen([sys.executable, "-c", _SLOW_SERVE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = process.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[1]
        png = _encoded(Image.fromarray(_array()))
        results: list = []

        def ask() -> None:
            results.append(httpx.post(url + "/predict", content=png, timeout=30).json())

        askers = [threading.Thread(target=ask) for _ in range(3)]
        for t in askers:
            t.start()
        with httpx.Client(base_url=url) as client:  # wait until all three are in the server
            while _metric(client, "rsvision_requests_total").get("", 0) < 3:
                time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # one batch running (0.5 s), the others queued or decoding
        for t in askers:
            t.join(30)
        assert process.wait(30) == 0, process.stderr.read()
        assert len(results) == 3 and all("index" in r for r in results), results
        assert "latency table" in process.stdout.read()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz")
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()


def test_the_command_refuses_bad_options_in_one_line(run, capsys):
    taken = listen("127.0.0.1", 0)
    taken.listen()
    port = str(taken.getsockname()[1])
    try:
        for args, words in [
            (["--batch-sizes", "0,1"], "--batch-sizes 0,1: expected positive batch sizes"),
            (["--policy", "fixed:99"], "--policy fixed:99: no sub-network 99 here (served: 16, 8)"),
            (["--slo-ms", "0"], "--slo-ms 0.0: expected a positive number"),
            (["--port", port], f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"),
            (["--device", "gpu"], "--device gpu: not a device"),
        ]:
            code, _, err = run_cli(["serve", str(run), "--port", "0", *args], capsys)
            assert code == 2 and err.startswith("error: " + words) and len(err.strip().splitlines()) == 1, (args, err)
    finally:
        taken.close()
