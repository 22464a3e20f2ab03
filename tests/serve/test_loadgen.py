"""The load generator's schedule and metrics (pure functions, numbers checkable by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rsvision.errors import UserError
from rsvision.serve.loadgen import (
    Outcome,
    Phase,
    check_url,
    image_order,
    load_phases,
    make_schedule,
    mix_lines,
    mix_text,
    parse_rates,
    percentile,
    read_images,
    read_trace,
    split_phases,
    summarize,
    table_rows,
    timeline,
)


def test_step_phases_split_the_duration_evenly():
    assert load_phases("step", [10, 40, 10], 30) == [
        Phase("step1", 0.0, 10.0, 10.0),
        Phase("step2", 10.0, 20.0, 40.0),
        Phase("step3", 20.0, 30.0, 10.0),
    ]
    assert load_phases("constant", [5], 12) == [Phase("constant", 0.0, 12.0, 5.0)]


def test_spikes_are_centred_and_evenly_spaced():
    assert load_phases("spike", [5, 50], 100, spike_s=10) == [
        Phase("base1", 0.0, 45.0, 5.0),
        Phase("spike1", 45.0, 55.0, 50.0),
        Phase("base2", 55.0, 100.0, 5.0),
    ]
    two = load_phases("spike", [5, 50], 100, spike_s=10, spikes=2)
    assert [(p.name, p.start, p.end) for p in two] == [
        ("base1", 0, 20), ("spike1", 20, 30), ("base2", 30, 70), ("spike2", 70, 80), ("base3", 80, 100)
    ]
    assert load_phases("spike", [1, 2], 50)[1] == Phase("spike1", 22.5, 27.5, 2.0)  # default: a tenth of the duration


@pytest.mark.parametrize(
    "shape, rates, duration, kwargs, message",
    [
        ("ramp", [1], 10, {}, "--shape ramp"),
        ("step", [1, -2], 10, {}, "--rates"),
        ("constant", [1, 2], 10, {}, "one rate"),
        ("spike", [1, 2, 3], 10, {}, "BASE,PEAK"),
        ("spike", [1, 2], 10, {"spike_s": 6, "spikes": 2}, "must fit"),
        ("step", [1], 0, {}, "--duration"),
    ],
)
def test_bad_shapes_are_one_line(shape, rates, duration, kwargs, message):
    with pytest.raises(UserError, match=message):
        load_phases(shape, rates, duration, **kwargs)


def test_the_schedule_is_a_function_of_shape_rates_duration_and_seed():
    a = make_schedule("step", [20, 80, 20], 30, seed=3)
    b = make_schedule("step", [20, 80, 20], 30, seed=3)
    np.testing.assert_array_equal(a.times, b.times)
    assert a.phases == b.phases
    assert not np.array_equal(a.times, make_schedule("step", [20, 80, 20], 30, seed=4).times)
    assert np.all(np.diff(a.times) >= 0) and a.times[0] >= 0 and a.times[-1] < 30
    # Poisson counts: 200, 800, 200 expected; 4 standard deviations either side.
    counts = [np.sum((a.times >= p.start) & (a.times < p.end)) for p in a.phases]
    for count, expected in zip(counts, (200, 800, 200)):
        assert abs(count - expected) < 4 * np.sqrt(expected)


def test_poisson_gaps_have_the_rate_as_mean():
    times = make_schedule("constant", [50], 400, seed=0).times  # about 20,000 arrivals
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() == pytest.approx(1 / 50, rel=0.05)  # exponential: std = mean


def test_a_zero_rate_phase_sends_nothing():
    s = make_schedule("step", [0, 10], 20, seed=0)
    assert s.times.min() >= 10


def test_a_trace_is_replayed_as_written(tmp_path):
    path = tmp_path / "arrivals.txt"
    path.write_text("# seconds since the start\n0.0\n0.25\n\n0.25  # two at once\n1.5\n")
    np.testing.assert_array_equal(read_trace(path), [0.0, 0.25, 0.25, 1.5])
    s = make_schedule("trace", trace=path)
    np.testing.assert_array_equal(s.times, [0.0, 0.25, 0.25, 1.5])
    assert s.phases[0].name == "trace" and s.phases[0].rate is None and s.duration > 1.5
    assert len(make_schedule("trace", duration=1.0, trace=path).times) == 3


@pytest.mark.parametrize("text, message", [("0\nabc\n", ":2: expected an arrival time"), ("1\n0.5\n", ":2: arrival times must be"), ("# only\n", "no arrival times")])
def test_a_bad_trace_names_the_line(tmp_path, text, message):
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_trace(path)


def test_image_order_is_seeded_and_covers_the_folder():
    order = image_order(1000, 7, seed=1)
    np.testing.assert_array_equal(order, image_order(1000, 7, seed=1))
    assert set(order.tolist()) == set(range(7))


def _outcomes() -> list[Outcome]:
    """Ten requests, SLO 100 ms: 4 on time and right, 1 on time and wrong, 2 late (right),
    2 dropped, 1 without an answer."""
    ok = dict(status=200, correct=True)
    return [
        Outcome(0.5, latency_ms=10, subnet="128", **ok),
        Outcome(1.0, latency_ms=20, subnet="128", **ok),
        Outcome(1.5, latency_ms=30, subnet="128", **ok),
        Outcome(2.0, latency_ms=40, subnet="64", **ok),
        Outcome(2.5, status=200, latency_ms=50, correct=False, subnet="128"),
        Outcome(3.0, latency_ms=150, subnet="128", **ok),
        Outcome(3.5, latency_ms=250, subnet="64", **ok),
        Outcome(4.0, status=503, latency_ms=1),
        Outcome(4.5, status=503, latency_ms=1),
        Outcome(4.9, status=0, error="ConnectError"),
    ]


def test_summary_counts_late_dropped_and_wrong_as_misses():
    s = summarize(_outcomes(), slo_ms=100, seconds=5)
    assert (s["requests"], s["answered"], s["on_time"], s["late"], s["dropped"], s["failed"]) == (10, 7, 5, 2, 2, 1)
    assert s["attainment"] == pytest.approx(50.0)  # 5 of 10 on time
    assert s["effective_accuracy"] == pytest.approx(40.0)  # 4 of 10 right and on time
    assert s["answer_accuracy"] == pytest.approx(600 / 7)  # 6 of the 7 answers right
    assert s["goodput"] == pytest.approx(0.8)  # 4 in 5 s
    assert s["offered_rate"] == pytest.approx(2.0)
    assert s["mix"] == pytest.approx({"128": 5 / 7, "64": 2 / 7})
    assert list(s["mix"]) == ["128", "64"]  # most used first
    # Answers' latencies 10 20 30 40 50 150 250; linear between order statistics.
    assert s["p50_ms"] == pytest.approx(40.0)
    assert s["p95_ms"] == pytest.approx(150 + 0.7 * 100)  # rank 0.95 x 6 = 5.7
    assert s["p99_ms"] == pytest.approx(150 + 0.94 * 100)


def test_the_deadline_is_inclusive_and_an_empty_part_has_no_rates():
    assert summarize([Outcome(0, status=200, latency_ms=100, correct=True)], 100, 1)["attainment"] == 100.0
    empty = summarize([], 100, 0)
    assert empty["attainment"] is None and empty["p99_ms"] is None and empty["goodput"] is None


def test_percentiles_on_one_to_one_hundred_and_one():
    values = list(range(1, 102))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (51.0, 96.0, 100.0)
    assert percentile([], 50) is None


def test_outcomes_split_by_scheduled_time_into_phases():
    phases = load_phases("step", [1, 2], 5)  # [0, 2.5) and [2.5, 5]
    parts = split_phases(_outcomes(), phases)
    assert [o.time for o in parts["step1"]] == [0.5, 1.0, 1.5, 2.0]
    assert len(parts["step2"]) == 6
    first = summarize(parts["step1"], 100, 2.5)
    assert first["attainment"] == 100.0 and first["goodput"] == pytest.approx(1.6)


def test_timeline_windows():
    rows = timeline(_outcomes(), slo_ms=100, duration=5, window_s=2)  # [0, 2) [2, 4) [4, 5)
    assert [r["t"] for r in rows] == [0, 2, 4]
    assert [r["offered"] for r in rows] == pytest.approx([1.5, 2.0, 3.0])  # 3, 4 and 3 requests
    assert rows[0]["resolution"] == 128 and rows[1]["resolution"] == pytest.approx((64 + 128 + 128 + 64) / 4)
    assert rows[2]["resolution"] is None and rows[2]["attainment"] == 0.0


def test_only_loopback_unless_allowed():
    assert check_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/predict"
    assert check_url("http://localhost:8000/") == "http://localhost:8000/predict"
    assert check_url("http://[::1]:8000/v1/predict") == "http://[::1]:8000/v1/predict"
    with pytest.raises(UserError, match="10.0.0.7 is not this machine"):
        check_url("http://10.0.0.7:8000")
    assert check_url("http://10.0.0.7:8000", allow_remote=True) == "http://10.0.0.7:8000/predict"
    with pytest.raises(UserError, match="expected http"):
        check_url("ftp://127.0.0.1/")


def test_images_and_labels_from_class_folders(tmp_path):
    for name, value in (("b_cat", 10), ("a_dog", 20)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (4, 4), value + i).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a_dog" / "notes.txt").write_text("not an image")
    images = read_images(tmp_path)
    assert images.classes == ["a_dog", "b_cat"]
    assert images.labels == [0, 0, 0, 1, 1, 1]
    assert set(images.types) == {"image/png"}
    sample = read_images(tmp_path, limit=4, seed=0)
    assert len(sample.bodies) == 4 and sample.bodies == read_images(tmp_path, limit=4, seed=0).bodies
    with pytest.raises(UserError, match="not a folder"):
        read_images(tmp_path / "missing")


def test_rates_from_the_command_line():
    assert parse_rates("10,40.5, 10") == [10.0, 40.5, 10.0]
    assert parse_rates(None) == []
    with pytest.raises(UserError, match="--rates 10,fast"):
        parse_rates("10,fast")


def test_a_trace_takes_no_rates(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("0\n1\n")
    with pytest.raises(UserError, match="drop --rates"):
        make_schedule("trace", [5], trace=path)
    with pytest.raises(UserError, match="--trace applies to --shape trace"):
        make_schedule("step", [5], 10, trace=path)


def test_table_rows_per_phase_then_overall():
    phases = load_phases("step", [1, 2], 5)
    parts = split_phases(_outcomes(), phases)
    result = {
        "phases": [{"name": p.name, **summarize(parts[p.name], 100, p.seconds)} for p in phases],
        "overall": summarize(_outcomes(), 100, 5),
    }
    rows = table_rows(result)
    assert [r[0] for r in rows] == ["step1", "step2", "overall"]
    assert rows[-1][1:5] == ["2.0", "10", "50.0", "40.0"]  # offered/s, requests, attainment, effective accuracy
    assert rows[-1][-1] == "2"  # dropped
    assert mix_lines(result) == ["step1: 128 75%, 64 25%", "step2: 128 67%, 64 33%", "overall: 128 71%, 64 29%"]
    assert mix_text({}) == "-"
