"""The load generator end to end over real HTTP on loopback, against a small fake server
(FastAPI under uvicorn in a thread on a free port, started and stopped here).

The fake server answers by the image's grey value, so every outcome is known from which
images the seeded order sends: class 0 right (sub-network 64), class 1 wrong (32), class 2
dropped (503 with Retry-After), class 3 right but after the SLO.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from rsvision.errors import UserError  # noqa: E402
from rsvision.serve.loadgen import SUBNET_FIELD, ImageSet, draw, image_order, make_schedule, read_images, run_load  # noqa: E402

SLO_MS = 400.0
LATE_S = 0.8


def _app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.post("/predict")
    async def predict(request: fastapi.Request):
        body = await request.body()
        label = Image.open(io.BytesIO(body)).getpixel((0, 0)) // 50
        if label == 2:
            return fastapi.responses.JSONResponse({"error": "overloaded"}, status_code=503, headers={"Retry-After": "1"})
        if label == 3:
            await asyncio.sleep(LATE_S)
        index = 0 if label == 1 else label
        return {"index": index, "name": str(index), "probability": 0.9, SUBNET_FIELD: "32" if label == 1 else "64", "queue_ms": 1.0, "compute_ms": 2.0}

    return app


@pytest.fixture
def server() -> Iterator[str]:
    config = uvicorn.Config(_app(), host="127.0.0.1", port=0, log_level="error", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        thread.join(0.05)
    assert srv.started, "the fake server did not start"
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


@pytest.fixture
def images(tmp_path):
    for label in range(4):
        folder = tmp_path / f"class{label}"
        folder.mkdir()
        Image.new("L", (8, 8), 50 * label + 10).save(folder / "a.png")
    return read_images(tmp_path)


def test_outcomes_over_http_match_what_the_server_did(server, images, tmp_path):
    schedule = make_schedule("step", [10, 30], 2.0, seed=5)
    result = run_load(server, schedule, images, SLO_MS, seed=5, max_requests=1000)
    sent = Counter(images.labels[k] for k in image_order(len(schedule.times), len(images.bodies), 5))
    overall = result["overall"]
    n = len(schedule.times)
    assert overall["requests"] == n
    assert overall["dropped"] == sent[2]
    assert overall["late"] == sent[3]
    assert overall["failed"] == 0
    assert overall["on_time"] == sent[0] + sent[1]
    assert overall["attainment"] == pytest.approx(100 * (sent[0] + sent[1]) / n)
    assert overall["effective_accuracy"] == pytest.approx(100 * sent[0] / n)
    assert overall["answer_accuracy"] == pytest.approx(100 * (sent[0] + sent[3]) / (n - sent[2]))
    assert overall["mix"] == pytest.approx({"64": (sent[0] + sent[3]) / (n - sent[2]), "32": sent[1] / (n - sent[2])})
    assert overall["p99_ms"] >= LATE_S * 1000
    assert [p["name"] for p in result["phases"]] == ["step1", "step2"]
    assert sum(p["requests"] for p in result["phases"]) == n
    assert result["timeline"][0]["resolution"] is not None
    out = draw(result, tmp_path / "load.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(result)  # the report is plain JSON


def test_the_in_flight_limit_fails_requests_rather_than_queue_them(server, images):
    late = images.labels.index(3)
    slow = ImageSet([images.bodies[late]], [3], [images.types[late]], ["class3"])
    schedule = make_schedule("constant", [20], 0.5, seed=0)
    result = run_load(server, schedule, slow, SLO_MS, max_in_flight=2)
    overall = result["overall"]
    assert overall["late"] == 2  # the two the limit let through, answered after LATE_S
    assert overall["failed"] == len(schedule.times) - 2
    assert "in-flight limit reached" in result["errors"]


def test_limits_are_checked_before_any_request(images):
    schedule = make_schedule("constant", [100], 2, seed=0)
    with pytest.raises(UserError, match="over --max-requests 10"):
        run_load("http://127.0.0.1:9", schedule, images, SLO_MS, max_requests=10)
    with pytest.raises(UserError, match="not this machine"):
        run_load("http://192.0.2.1:8000", schedule, images, SLO_MS)


def test_the_command_writes_the_report_and_the_plot(server, images, tmp_path):
    from click.testing import CliRunner

    from rsvision.cli import cli

    folder = tmp_path / "folder"
    for label in (0, 3):  # right and on time, right and late
        (folder / f"class{label}").mkdir(parents=True)
        (folder / f"class{label}" / "a.png").write_bytes(images.bodies[images.labels.index(label)])
    out = CliRunner().invoke(cli, ["loadgen", server, "--images", str(folder), "--slo-ms", str(SLO_MS), "--shape", "step",
                                   "--rates", "10,20", "--duration", "1", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["shape"] == "step" and [p["name"] for p in result["phases"]] == ["step1", "step2"]
    # class3 is class index 1 here (the second sorted folder): the late answers (index 3) are wrong as well.
    assert result["overall"]["effective_accuracy"] == pytest.approx(100 * result["overall"]["on_time"] / result["overall"]["requests"])
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert "overall: 64 100%" in out.output


def test_the_command_refuses_a_remote_host_in_one_line(images, tmp_path):
    from click.testing import CliRunner

    from rsvision.cli import cli

    out = CliRunner().invoke(cli, ["loadgen", "http://192.0.2.1:8000", "--images", str(tmp_path), "--slo-ms", "50", "--rates", "1"])
    assert out.exit_code == 2
    assert "192.0.2.1 is not this machine" in out.output
