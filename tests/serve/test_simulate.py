"""The serving simulation's pieces on a two-row table small enough to follow by hand:
sub-network a (accuracy 90) takes 10 ms alone and 15 ms for two, b (accuracy 60) 4 and 6 ms."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rsvision.errors import UserError
from rsvision.serve.simulate import Autoscale, DegradeThenScale, Profile, QueueLength, Signals, bursty_trace, read_profile, simulate

TABLE = {"a": {1: 10.0, 2: 15.0}, "b": {1: 4.0, 2: 6.0}}
ACCURACY = {"b": 60.0, "a": 90.0}
ONE = Autoscale(min_replicas=1, max_replicas=1)


def profile(slo_ms: float) -> Profile:
    return Profile(TABLE, ACCURACY, slo_ms)


def test_profile_orders_by_accuracy_and_times_a_batch_at_its_table_size(tmp_path):
    p = profile(50)
    assert p.order == ["a", "b"] and p.top == "a"
    assert (p.batch_ms("a", 1), p.batch_ms("a", 2), p.batch_ms("b", 2)) == (10.0, 15.0, 6.0)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"latency_ms": {"a": {"1": 10, "2": 15}, "b": {"1": 4, "2": 6}}, "accuracy": ACCURACY, "slo_ms": 50}))
    assert read_profile(path) == p
    path.write_text(json.dumps({"latency_ms": {"a": {"1": 10}}, "accuracy": {"b": 1.0}, "slo_ms": 50}))
    with pytest.raises(UserError, match="same sub-networks"):
        read_profile(path)


def test_one_replica_batches_what_waits():
    """0 ms: alone on a (0-10). 1 and 2 ms wait; at 10 both fit on a in one batch of two (10-25)."""
    result = simulate([0.0, 0.001, 0.002], profile(50), QueueLength(), ONE)
    assert result.latency_ms == pytest.approx([10.0, 24.0, 23.0])
    assert result.subnet == ["a", "a", "a"]
    assert result.replica_seconds == pytest.approx(0.025) and result.replicas == [(0.0, 1), (0.025, 0)]
    summary = result.summary(profile(50))
    assert (summary["attainment"], summary["effective_accuracy"], summary["dropped"]) == (100.0, 90.0, 0)


def test_degrading_saves_the_burst_the_fixed_subnetwork_loses():
    """SLO 20 ms, arrivals at 0, 1, 2 ms. At 10 ms two wait, due at 21 and 22.
    fixed (a only): no plan is on time; a batch of one ends at 20 (<= 21), the last one is
    then hopeless but served alone (the worker would idle): 20-30, late.
    adaptive: a in batches of 2 ends at 25 > 21, of 1 the second at 30 > 22; b for two ends at 16."""
    fixed = simulate([0.0, 0.001, 0.002], profile(20), QueueLength(), ONE)
    assert fixed.latency_ms == pytest.approx([10.0, 19.0, 28.0]) and fixed.subnet == ["a", "a", "a"]
    adaptive = simulate([0.0, 0.001, 0.002], profile(20), DegradeThenScale(), ONE)
    assert adaptive.latency_ms == pytest.approx([10.0, 15.0, 14.0]) and adaptive.subnet == ["a", "b", "b"]
    f, d = fixed.summary(profile(20)), adaptive.summary(profile(20))
    assert f["attainment"] == pytest.approx(200 / 3) and f["effective_accuracy"] == pytest.approx(60.0)
    assert d["attainment"] == 100.0 and d["effective_accuracy"] == pytest.approx(70.0) and d["mix"] == pytest.approx({"a": 1 / 3, "b": 2 / 3})


def test_the_router_takes_the_shortest_queue():
    two = Autoscale(min_replicas=2, max_replicas=2)
    result = simulate([0.0, 0.001], profile(50), QueueLength(), two)
    assert result.latency_ms == pytest.approx([10.0, 10.0])  # the second on the idle replica, not behind the first
    assert result.replica_seconds == pytest.approx(2 * 0.011)


def test_policies_targets():
    def signals(**kw):
        return Signals(**{"routed": 100, "shed": 0, "batches": 10, "below_top": 0, "utilisation": 0.5, "ongoing": 0.0, "replicas": 4, **kw})

    policy = DegradeThenScale(degraded_up=0.2, slack=0.7)
    assert policy.target(signals(below_top=5)) == 4 + 2  # half the batches degraded: + ceil(4 x 0.5)
    assert policy.target(signals(below_top=1)) == 4  # 0.1 degraded: within the tolerance
    assert policy.target(signals(below_top=1, shed=3)) == 5  # any shed: + ceil(4 x 0.1), at least 1
    assert policy.target(signals()) == 3  # 0.5 x 4 / 3 = 0.67 < 0.7 with one fewer
    assert policy.target(signals(utilisation=0.6)) == 4  # 0.8 with one fewer: keep
    assert QueueLength(target_ongoing=2).target(signals(ongoing=5.0)) == 3
    assert QueueLength(target_ongoing=2).target(signals(ongoing=4.0)) == 2


def test_a_replica_costs_from_launch_and_serves_after_its_startup():
    """200 requests/s on a (one replica serves at most 2 per 15 ms, 133/s): at the 1 s tick the
    queue asks for more; the second replica is launched at 1 s and ready at 2 s."""
    arrivals = np.arange(0, 3, 0.005)
    scale = Autoscale(min_replicas=1, max_replicas=2, startup_s=1.0, tick_s=1.0, lookback_s=1.0, down_s=0.0)
    result = simulate(arrivals, profile(50), QueueLength(target_ongoing=1), scale)
    end = result.replicas[-1][0]
    assert result.replicas[:2] == [(0.0, 1), (1.0, 2)]
    assert result.replica_seconds == pytest.approx(end + (end - 1.0))
    late = [lat is None or lat > 50 for lat in result.latency_ms]
    first, last = arrivals < 1.0, arrivals >= 2.1
    assert np.mean(np.array(late)[first]) > 0.2 and not any(np.array(late)[last])  # overloaded alone, in time with two


def test_bursty_trace_keeps_its_mean_and_is_seeded():
    trace = bursty_trace(200.0, 300.0, seed=1)
    assert len(trace) / 300.0 == pytest.approx(200.0, rel=0.1)
    assert np.all(np.diff(trace) >= 0) and np.array_equal(trace, bursty_trace(200.0, 300.0, seed=1))
    counts = np.bincount(trace.astype(int), minlength=300)
    assert counts.max() > 3 * np.median(counts)  # bursts at 4x the base rate
    with pytest.raises(UserError):
        bursty_trace(-1.0, 10.0)
