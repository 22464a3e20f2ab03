"""The serving scheduler's decisions on a fake clock and a made-up latency table, checkable by hand."""

from __future__ import annotations

import pytest

from rsvision.errors import UserError
from rsvision.serve.scheduler import (
    HOPELESS,
    QUEUE_FULL,
    LatencyTable,
    Request,
    Scheduler,
    parse_batch_sizes,
    parse_policy,
)

# Milliseconds per batch of 1, 2, 4, 8 on three sub-networks, most accurate first.
TABLE = {
    "224": {1: 10.0, 2: 16.0, 4: 28.0, 8: 50.0},
    "160": {1: 6.0, 2: 9.0, 4: 15.0, 8: 26.0},
    "96": {1: 3.0, 2: 4.0, 4: 6.0, 8: 10.0},
}
ADAPTIVE = ["224", "160", "96"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scheduler(subnets=ADAPTIVE, max_queue=64, margin_ms=0.0, alpha=0.2) -> tuple[Scheduler, FakeClock]:
    clock = FakeClock()
    return Scheduler(list(subnets), LatencyTable(TABLE, alpha), max_queue=max_queue, margin_ms=margin_ms, clock=clock), clock


def submit(s: Scheduler, deadline: float, count: int = 1, name: str = "r") -> list[Request]:
    out = []
    for i in range(count):
        request = Request(s.clock(), deadline, f"{name}{i}")
        assert s.submit(request) is None
        out.append(request)
    return out


def decision(s: Scheduler) -> tuple[str | None, int, list]:
    d = s.dispatch()
    return (d.batch.subnet if d.batch else None), (len(d.batch.requests) if d.batch else 0), [r.payload for r in d.dropped]


def test_light_load_picks_the_most_accurate():
    s, _ = scheduler()
    submit(s, deadline=100)
    assert decision(s) == ("224", 1, [])  # 0 + lat[224][1] = 10 <= 100
    assert decision(s) == (None, 0, [])


def test_a_tight_deadline_forces_a_cheaper_subnetwork():
    s, _ = scheduler()
    submit(s, deadline=8)  # 224 needs 10 > 8; 160 needs 6
    assert decision(s) == ("160", 1, [])
    submit(s, deadline=5)  # 160 needs 6 > 5; 96 needs 3
    assert decision(s) == ("96", 1, [])


def test_the_margin_is_kept_in_hand():
    s, _ = scheduler(margin_ms=5)
    submit(s, deadline=12)  # 224: 10 + 5 > 12; 160: 6 + 5 <= 12
    assert decision(s) == ("160", 1, [])


def test_the_observed_handover_is_kept_in_hand():
    s, _ = scheduler(margin_ms=1, alpha=0.5)
    s.observe_handover(6.0)  # h = 0 + 0.5 * 6 = 3
    assert s.reserve == 4.0
    submit(s, deadline=13)  # 224: 10 + 4 > 13; 160: 6 + 4 <= 13
    assert decision(s) == ("160", 1, [])
    assert s.submit(Request(0, 6.5, "tight")) == HOPELESS  # even 96 alone: 3 + 4 > 6.5


def test_the_earliest_deadline_goes_first():
    s, clock = scheduler()
    submit(s, deadline=100, name="late")
    clock.now = 1
    submit(s, deadline=50, name="early")
    d = s.dispatch()
    assert [r.payload for r in d.batch.requests] == ["early0", "late0"]  # one batch of 2 on 224: 16 <= 50


def test_the_batch_grows_with_the_queue():
    s, _ = scheduler()
    submit(s, deadline=100, count=3)
    assert decision(s) == ("224", 3, [])  # 3 requests cost lat[224][4] = 28
    submit(s, deadline=100, count=12)
    # Batches of 8 on 224: 50, then the other 4 at 50 + 28 = 78, both <= 100.
    assert decision(s) == ("224", 8, [])


def test_the_whole_queue_decides_not_only_its_head():
    s, _ = scheduler()
    submit(s, deadline=40, count=8)
    # 224 in batches of 4 ends the first at 28 <= 40 but the second at 56 > 40, and in
    # batches of 1 the fifth at 50; 160 serves all 8 at once in 26 <= 40.
    assert decision(s) == ("160", 8, [])


def test_overload_serves_the_most_requests_per_millisecond():
    s, _ = scheduler()
    submit(s, deadline=30, count=40)
    # No plan is on time (96 in batches of 8 ends the fourth at 40 > 30). First batches in
    # time, requests per ms: 96 at 8 gives 8 / 10 = 0.8, the most.
    assert decision(s) == ("96", 8, [])


def test_ema_correction_changes_the_decision():
    s, _ = scheduler(alpha=0.5)
    submit(s, deadline=12)
    d = s.dispatch()
    assert d.batch.subnet == "224" and d.batch.predicted_ms == 10
    s.observe(d.batch, 20.0)  # e = 10: lat = 10 + 0.5 * 10 = 15, dev = 0 + 0.5 * 10 = 5, planned 15 + 2 * 5
    assert s.table.as_dict()["224"][1] == 15.0 and s.table.planned()["224"][1] == 25.0
    submit(s, deadline=12)
    assert decision(s) == ("160", 1, [])  # 25 > 12
    submit(s, deadline=100)
    d = s.dispatch()
    s.observe(d.batch, 15.0)  # e = 0: lat stays 15, dev = 5 + 0.5 * (0 - 5) = 2.5, planned 20
    assert s.table.as_dict()["224"][1] == 15.0 and s.table.planned()["224"][1] == 20.0
    submit(s, deadline=1000, count=3)
    d = s.dispatch()
    assert d.batch.subnet == "224" and len(d.batch.requests) == 3
    s.observe(d.batch, 99.0)  # 3 is not a table size: lat[224][4] keeps its value
    assert s.table.planned()["224"][4] == 28.0


def test_fixed_policy_uses_one_subnetwork_and_sheds_what_it_cannot_serve():
    s, clock = scheduler(subnets=["224"])
    submit(s, deadline=40, count=8)
    # No plan on 224 is on time; in time first batches: 1/10, 2/16, 4/28 requests per ms.
    assert decision(s) == ("224", 4, [])
    assert s.submit(Request(0, 8, "tight")) == HOPELESS  # 224 alone needs 10 > 8
    clock.now = 28
    # Left: 4 due at 40. Batches of 2 end at 44 > 40, so one: 38 <= 40.
    assert decision(s) == ("224", 1, [])
    clock.now = 39  # 39 + 10 > 40: all three are hopeless; the worker would idle, so r7 runs
    assert decision(s) == ("224", 1, ["r5", "r6"])
    assert s.drops == {HOPELESS: 3}


def test_an_idle_worker_takes_what_the_table_calls_hopeless():
    s, clock = scheduler(alpha=0.5)
    assert s.submit(Request(0, 2, "first")) is None  # even 96 needs 3 > 2, but nothing else wants the worker
    assert decision(s) == ("96", 1, [])
    assert s.submit(Request(0, 2, "second")) == HOPELESS  # now the worker is busy
    assert decision(s) == (None, 0, [])  # free again, nothing queued
    assert s.submit(Request(0, 0, "expired")) == HOPELESS  # past its deadline: never
    # While a batch runs, two requests queue; by the next dispatch both are hopeless.
    submit(s, deadline=100, name="a")
    assert decision(s) == ("224", 1, [])
    s.submit(Request(0, 10, "b"))
    s.submit(Request(0, 12, "c"))
    clock.now = 11  # b is past its deadline, c has 1 ms left: c runs alone on 96, b is dropped
    d = s.dispatch()
    assert (d.batch.subnet, [r.payload for r in d.batch.requests], [r.payload for r in d.dropped]) == ("96", ["c"], ["b"])


def test_drops_hopeless_and_overflowing_requests():
    s, clock = scheduler(max_queue=2)
    submit(s, deadline=100, count=2)
    assert s.admits(100) == QUEUE_FULL
    assert s.submit(Request(0, 100, "third")) == QUEUE_FULL and len(s) == 2
    assert s.submit(Request(0, 2.5, "hopeless")) == HOPELESS  # even 96 alone needs 3
    clock.now = 97
    # Both are still servable alone on 96 (97 + 3 <= 100), not together (97 + 4 > 100), and no
    # plan is on time: the first batch in time with the most requests per ms is one on 96.
    assert decision(s) == ("96", 1, [])
    clock.now = 100  # 100 + 3 > 100: the second is dropped at the next dispatch
    assert decision(s) == (None, 0, ["r1"])
    assert s.drops == {QUEUE_FULL: 1, HOPELESS: 2}
    submit(s, deadline=300, name="b")
    submit(s, deadline=200, name="a")
    assert [r.payload for r in s.drain()] == ["a0", "b0"] and len(s) == 0


def test_policies_batch_sizes_and_tables_are_checked():
    assert parse_policy("adaptive", ADAPTIVE) == ADAPTIVE
    assert parse_policy("fixed:160", ADAPTIVE) == ["160"]
    with pytest.raises(UserError, match=r"--policy fixed:128: no sub-network 128 here \(served: 224, 160, 96\)"):
        parse_policy("fixed:128", ADAPTIVE)
    with pytest.raises(UserError, match="expected adaptive or fixed:ID"):
        parse_policy("fastest", ADAPTIVE)
    assert parse_batch_sizes("8, 1,2,4,2") == [1, 2, 4, 8]
    for bad in ("", "1,,2", "0,1", "1.5", "four"):
        with pytest.raises(UserError, match="--batch-sizes"):
            parse_batch_sizes(bad)
    with pytest.raises(ValueError, match="sub-network 96 needs a positive time at every batch size"):
        LatencyTable({"224": {1: 10.0, 2: 16.0}, "96": {1: 3.0}})
    with pytest.raises(ValueError, match="positive time"):
        LatencyTable({"224": {1: 0.0}})
    table = LatencyTable(TABLE)
    assert table.sizes == [1, 2, 4, 8] and table.size_for(3) == 4 and table.cost("160", 5) == 26.0
