"""The Ray engine: the autoscaling rule on hand-checked counters, and the server on a local Ray
instance on loopback (2 CPUs, started and stopped here) answering as the single-process Runner."""

from __future__ import annotations

import io
import re
import socket
import sys
import time

import numpy as np
import pytest
from calib_fixtures import run_cli
from deploy_fixtures import cls_run

from rsvision.serve.ray_engine import NEEDS_RAY, decide, window_signals
from rsvision.serve.simulate import DegradeThenScale

RULE = DegradeThenScale(degraded_up=0.2, slack=0.7)


def _series(**per_replica: list[list[tuple[float, float]]]) -> dict:
    """counter -> replica index -> samples."""
    return {counter: dict(enumerate(replicas)) for counter, replicas in per_replica.items()}


def test_window_signals_count_each_replica_from_its_first_sample():
    series = _series(
        routed=[[(0.0, 100.0), (5.0, 160.0)], [(0.0, 10.0), (5.0, 50.0)]],  # 60 + 40
        shed=[[(0.0, 2.0), (5.0, 7.0)], [(1.0, 0.0), (5.0, 0.0)]],  # 5 + 0
        batches=[[(0.0, 0.0), (5.0, 30.0)], [(0.0, 20.0), (5.0, 30.0)]],  # 30 + 10
        below_top=[[(0.0, 0.0), (5.0, 10.0)], [(0.0, 9.0), (5.0, 3.0)]],  # 10 + 0: the second restarted
        busy_ms=[[(0.0, 0.0), (5.0, 2000.0)], [(0.0, 0.0), (4.0, 1000.0)]],  # 3000 ms busy over 9000 ms
    )
    s = window_signals(series, replicas=2, ongoing=3.0)
    assert (s.routed, s.shed, s.batches, s.below_top, s.replicas, s.ongoing) == (100, 5, 40, 10, 2, 3.0)
    assert s.shed_rate == pytest.approx(0.05) and s.degraded == pytest.approx(0.25) and s.utilisation == pytest.approx(1 / 3)


def test_decide_scales_up_on_shedding_or_degrading_and_down_when_idle():
    window = dict(current=2, target=2, ongoing=0.0, now=100.0, last_change=50.0, lookback_s=10.0)
    # 5 % shed, 25 % of the batches below the top: 2 + ceil(2 * 0.25) = 3.
    busy = _series(routed=[[(0, 0), (5, 100)]], shed=[[(0, 0), (5, 5)]], batches=[[(0, 0), (5, 40)]], below_top=[[(0, 0), (5, 10)]],
                   busy_ms=[[(0, 0), (5, 4000)]])
    assert decide(RULE, busy, **window) == 3
    # Nothing shed, 60 % of the batches degraded (> 0.2): 2 + ceil(2 * 0.6) = 4.
    degraded = _series(routed=[[(0, 0), (5, 100)]], batches=[[(0, 0), (5, 10)]], below_top=[[(0, 0), (5, 6)]], busy_ms=[[(0, 0), (5, 4000)]])
    assert decide(RULE, degraded, **window) == 4
    # Nothing shed, all on the top, 30 % busy on each of 2: 0.3 * 2 / 1 = 0.6 < 0.7, one fewer.
    idle = _series(routed=[[(0, 0), (5, 100)], [(0, 0), (5, 100)]], batches=[[(0, 0), (5, 50)], [(0, 0), (5, 50)]],
                   busy_ms=[[(0, 0), (5, 1500)], [(0, 0), (5, 1500)]])
    assert decide(RULE, idle, **window) == 1
    # 40 % busy: 0.8 >= 0.7, the count holds.
    held = _series(routed=[[(0, 0), (5, 100)]], batches=[[(0, 0), (5, 50)]], busy_ms=[[(0, 0), (5, 2000)], [(0, 0), (5, 2000)]])
    assert decide(RULE, held, **window) == 2
    # Replicas still starting (2 running of 3), or a change 5 s ago with a 10 s look-back: wait.
    assert decide(RULE, busy, **{**window, "target": 3}) == 3
    assert decide(RULE, busy, **{**window, "last_change": 95.0}) == 2
    # No counters yet (a fresh deployment): nothing to act on.
    assert decide(RULE, {}, **{**window, "current": 1, "target": 1}) == 1


def test_engine_ray_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    code, _, err = run_cli(["serve", str(tmp_path), "--engine", "ray"], capsys)
    assert code == 2 and err.strip() == f"error: {NEEDS_RAY}"


def test_engine_ray_refuses_what_every_replica_would_before_ray_starts(tmp_path_factory, tmp_path, capsys):
    pytest.importorskip("ray")
    run = cls_run(tmp_path_factory)
    for args, words in [
        ([str(run), "--policy", "fixed:99"], "--policy fixed:99: no sub-network 99 here (served: 16, 8)"),
        ([str(run), "--min-replicas", "3", "--max-replicas", "2"], "--min-replicas 3 --max-replicas 2: expected 1 <= min <= max"),
        ([str(tmp_path / "missing")], str(tmp_path / "missing")),
    ]:
        code, _, err = run_cli(["serve", *args, "--engine", "ray", "--port", "0"], capsys)
        assert code == 2 and err.startswith("error: " + words) and len(err.strip().splitlines()) == 1, (args, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny run on Ray Serve (1 to 2 replicas) on 127.0.0.1: (run, URL); Ray stopped after."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve")
    from rsvision.serve.app import ServeConfig
    from rsvision.serve.ray_engine import start, stop

    run = cls_run(tmp_path_factory)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error", _node_ip_address="127.0.0.1")
    try:
        config = ServeConfig(policy="fixed:16", slo_ms=5000, repeats=3, warmup=1, threads=1, worker="thread")
        yield run, start(run, config, host="127.0.0.1", port=_free_port(), min_replicas=1, max_replicas=2)
    finally:
        stop()


def test_ray_engine_answers_as_the_runner_and_counts_its_replicas(served):
    import httpx
    from PIL import Image

    import rsvision

    run, url = served
    model = rsvision.load(run)
    with httpx.Client(base_url=url, timeout=60) as client:
        for seed in range(3):
            array = np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)
            png = io.BytesIO()
            Image.fromarray(array).save(png, format="PNG")
            response = client.post("/predict", content=png.getvalue(), headers={"content-type": "image/png"})
            assert response.status_code == 200, response.text
            answer, expected = response.json(), model.predict(array)
            assert (answer["index"], answer["name"], answer["subnet"]) == (expected.index, expected.name, "16")
            assert answer["probability"] == pytest.approx(expected.probability, abs=1e-5)
        deadline = time.monotonic() + 30
        while True:  # the count is refreshed from Serve's status every few seconds
            metrics = client.get("/metrics").text
            found = re.search(r"^rsvision_replicas (\S+)$", metrics, re.M)
            if (found and float(found.group(1)) == 1.0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found and float(found.group(1)) == 1.0, metrics[-2000:]
        assert re.search(r'^rsvision_answers_total\{subnet="16"\} 3\.0$', metrics, re.M)
