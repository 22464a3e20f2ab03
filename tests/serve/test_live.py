"""The live view: the ring of per-second windows on a fake clock (hand-checked numbers), the
page and its JSON over real HTTP on loopback, and a headless-Chromium screenshot of the page
after a short load (skipped without the ``chromium`` binary)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsvision.serve.live import LiveWindows

pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import rsvision  # noqa: E402
from deploy_fixtures import cls_run  # noqa: E402
from rsvision.serve.runner import Runner  # noqa: E402
from test_server import _array, _encoded, running  # noqa: E402


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_windows_count_each_second():
    clock = Clock()
    live = LiveWindows(slo_ms=100, span=3, clock=clock)
    live.arrived(100)
    live.arrived(200, 2)
    live.answered(300, 50, "16")
    live.answered(900, 150, "8")  # late: 150 > 100
    live.dropped(950)
    live.arrived(1500)
    live.answered(1600, 20, "8")
    clock.t = 2100  # the current window is [2000, 3000): windows -1, 0, 1 are the complete ones
    snap = live.snapshot(["16", "8"])
    assert snap["slo_ms"] == 100 and snap["window_s"] == 1 and snap["order"] == ["16", "8"]
    quiet, first, second = snap["windows"]
    assert quiet == {"t": -3.0, "offered": 0, "answered": 0, "dropped": 0, "late": 0, "p99_ms": None, "subnets": {}, "chosen": None}
    assert (first["t"], first["offered"], first["answered"], first["dropped"], first["late"]) == (-2.0, 3, 2, 1, 1)
    assert first["p99_ms"] == pytest.approx(50 + 0.99 * (150 - 50))  # linear between the two answers: 149
    assert first["subnets"] == {"16": 1, "8": 1} and first["chosen"] == "16"  # a tie goes to the more accurate
    assert (second["offered"], second["answered"], second["p99_ms"], second["chosen"]) == (1, 1, 20, "8")
    assert live.snapshot(["8", "16"])["windows"][1]["chosen"] == "8"


def test_windows_forget_past_the_span_and_scale_to_per_second():
    clock = Clock()
    live = LiveWindows(slo_ms=50, span=3, clock=clock)
    for t in (100, 1100, 5100):
        live.arrived(t)
    assert sorted(live._ring) == [5]  # windows 0 and 1 are older than 5 - 3
    clock.t = 6000
    assert [w["offered"] for w in live.snapshot()["windows"]] == [0, 0, 1]
    half = LiveWindows(slo_ms=50, span=2, window_ms=500, clock=Clock(1000))
    half.arrived(600)
    half.answered(700, 10, "a")
    snap = half.snapshot()
    assert snap["window_s"] == 0.5 and [w["t"] for w in snap["windows"]] == [-1.0, -0.5]
    assert (snap["windows"][1]["offered"], snap["windows"][1]["answered"]) == (2, 2)  # one event in half a second
    # An event a little behind the newest window (another thread's clock read) lands in its own window.
    half.arrived(1600)
    half.arrived(1200)
    assert sorted(half._ring) == [2, 3]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return cls_run(tmp_path_factory)


def _until_next_second() -> None:
    """Sleep past the next whole second of the server's clock, so the windows so far are complete."""
    time.sleep(1.05 - (time.monotonic() % 1.0))


def test_page_and_json_over_http(run):
    png = _encoded(Image.fromarray(_array()))
    with running(Runner(rsvision.load(run)), policy="adaptive") as client:
        for _ in range(5):
            assert client.post("/predict", content=png, headers={"content-type": "image/png"}).status_code == 200
        assert client.post("/predict", content=b"not an image", headers={"content-type": "image/png"}).status_code == 400
        _until_next_second()
        snap = client.get("/live.json").json()
        order = client.get("/info").json()["order"]
        page = client.get("/")
    windows = snap["windows"]
    assert len(windows) == 300 and snap["order"] == order and snap["slo_ms"] == 5000
    assert sum(w["offered"] for w in windows) == 6  # the bad image was asked for, never answered
    assert sum(w["answered"] for w in windows) == 5 and sum(w["dropped"] for w in windows) == 0
    assert {w["chosen"] for w in windows if w["answered"]} <= set(order)
    assert all(w["p99_ms"] > 0 for w in windows if w["answered"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "live.json" in page.text and "<canvas" in page.text
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page.text)  # nothing fetched from elsewhere


def _load(client, png: bytes, seconds: float) -> None:
    """About 30 requests per second, one after the other, for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        client.post("/predict", content=png, headers={"content-type": "image/png"})
        time.sleep(0.02)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the chromium binary (apt-get install chromium)")
def test_screenshot_shows_the_curves(run, tmp_path):
    """After a few seconds of load, headless Chromium renders the page: the answers' curve
    (#1f77b4) and the SLO line (#d62728) are drawn. RSVISION_LIVE_SCREENSHOT=PATH keeps the image."""
    png = _encoded(Image.fromarray(_array()))
    shot = tmp_path / "live.png"
    with running(Runner(rsvision.load(run)), policy="adaptive", slo_ms=200) as client:
        _load(client, png, 3.0)
        _until_next_second()
        url = f"{client.base_url}/"
        result = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=3000",
             f"--screenshot={shot}", "--window-size=1000,720", url],
            capture_output=True, text=True, timeout=60,
        )
    assert shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - rgb).sum(axis=1) <= 30).sum())

    assert count((31, 119, 180)) > 200, "no answers curve on the page"
    assert count((214, 39, 40)) > 100, "no SLO line on the page"
    if os.environ.get("RSVISION_LIVE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["RSVISION_LIVE_SCREENSHOT"])
