"""The fluid bound (rsvision.serve.bound) on numbers checkable by hand."""

from __future__ import annotations

import pytest

from rsvision.errors import UserError
from rsvision.serve.bound import ServiceCost, best_batch, capacity, fluid_bound

# Two sub-networks: "big" 90 % at 10 ms per request (batch 4 in 40 ms), "small" 80 % at
# 2 ms per request (batch 8 in 16 ms). Batch 1 is dearer for both.
ACCURACY = {"big": 90.0, "small": 80.0}
LATENCY = {"big": {1: 16.0, 4: 40.0}, "small": {1: 5.0, 8: 16.0}}


def test_best_batch_is_the_cheapest_per_request():
    assert best_batch(LATENCY["big"]) == ServiceCost(batch=4, ms=10.0)
    assert best_batch(LATENCY["small"]) == ServiceCost(batch=8, ms=2.0)
    assert best_batch({1: 4.0, 2: 8.0}) == ServiceCost(batch=1, ms=4.0)  # a tie: the smaller batch
    assert capacity(LATENCY["big"]) == pytest.approx(100.0)  # 1000 ms / 10 ms
    assert capacity(LATENCY["small"]) == pytest.approx(500.0)


def test_the_objective_leaves_out_batches_longer_than_it():
    assert best_batch(LATENCY["big"], slo_ms=20.0) == ServiceCost(batch=1, ms=16.0)
    assert best_batch(LATENCY["big"], slo_ms=10.0) is None
    assert capacity(LATENCY["big"], slo_ms=10.0) == 0.0


def test_light_load_serves_everyone_at_the_most_accurate():
    bound = fluid_bound(50.0, ACCURACY, LATENCY)  # big alone: 50/s x 10 ms = 50 % busy
    assert bound.accuracy == pytest.approx(90.0)
    assert bound.mix == pytest.approx({"big": 1.0})
    assert bound.dropped == pytest.approx(0.0)
    assert bound.utilisation == pytest.approx(0.5)


def test_a_rate_between_the_capacities_mixes_the_two():
    # 200/s leaves 5 ms per request: 10 x + 2 (1 - x) = 5 -> x = 3/8 at big.
    bound = fluid_bound(200.0, ACCURACY, LATENCY)
    assert bound.mix == pytest.approx({"big": 0.375, "small": 0.625})
    assert bound.accuracy == pytest.approx(0.375 * 90 + 0.625 * 80)  # 83.75
    assert bound.dropped == pytest.approx(0.0, abs=1e-9)
    assert bound.utilisation == pytest.approx(1.0)


def test_overload_drops_what_the_cheapest_cannot_serve():
    # 1000/s leaves 1 ms per request; small needs 2: half is served (at 80 %), half dropped.
    bound = fluid_bound(1000.0, ACCURACY, LATENCY)
    assert bound.mix == pytest.approx({"small": 0.5})
    assert bound.dropped == pytest.approx(0.5)
    assert bound.accuracy == pytest.approx(40.0)


def test_a_dominated_sub_network_is_never_chosen():
    # "worse" is both less accurate and dearer than "small".
    bound = fluid_bound(200.0, {**ACCURACY, "worse": 70.0}, {**LATENCY, "worse": {1: 3.0}})
    assert set(bound.mix) == {"big", "small"}
    assert bound.accuracy == pytest.approx(83.75)


def test_no_sub_network_fits_the_objective_drops_everything():
    bound = fluid_bound(10.0, ACCURACY, LATENCY, slo_ms=1.0)
    assert bound.accuracy == pytest.approx(0.0)
    assert bound.dropped == pytest.approx(1.0)
    assert bound.mix == {}


def test_no_load_is_the_best_accuracy():
    assert fluid_bound(0.0, ACCURACY, LATENCY).accuracy == pytest.approx(90.0)


def test_as_dict_names_the_costs():
    d = fluid_bound(200.0, ACCURACY, LATENCY).as_dict()
    assert d["costs"]["big"] == {"batch": 4, "ms_per_request": 10.0}
    assert d["accuracy"] == pytest.approx(83.75)


@pytest.mark.parametrize(
    "rate, accuracy, latency, message",
    [
        (-1.0, ACCURACY, LATENCY, "rate must be >= 0"),
        (1.0, {"big": 90.0}, LATENCY, "different sub-networks (small)"),
        (1.0, ACCURACY, {**LATENCY, "small": {0: 1.0}}, "sub-network small"),
        (1.0, ACCURACY, {**LATENCY, "small": {}}, "sub-network small"),
    ],
)
def test_bad_input_is_one_line(rate, accuracy, latency, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fluid_bound(rate, accuracy, latency)
