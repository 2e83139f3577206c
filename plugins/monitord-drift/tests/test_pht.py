"""Page-Hinkley: the documented formula, batch = sample by sample, snapshots, and quality targets."""

from __future__ import annotations

import doctest
import json
import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monitord.settings import DetectorSpec
from monitord_drift import pht
from monitord_drift.base import build_detector
from monitord_drift.pht import PageHinkley
from monitord_drift.plugin import detector_class
from streams import run_in_pieces, with_holes

LEVEL = {"ok": 0, "warning": 1, "drift": 2}


# -- the documented formula as a plain loop ------------------------------------------------


def oracle(values, reference, *, delta=0.25, threshold=20.0, warning_threshold=None, alpha=1.0,
           min_samples=30, direction="both", with_toward=False):
    """PageHinkley's docstring, one sample at a time: (index, level, statistic) per rise, and
    with ``with_toward`` whether the shift found there points back toward the reference."""
    warning = 0.75 * threshold if warning_threshold is None else warning_threshold
    mu = sum(reference) / len(reference)
    sigma = math.sqrt(sum((r - mu) ** 2 for r in reference) / (len(reference) - 1))
    if not sigma > 1e-9 * max(1.0, abs(mu)):
        sigma = 1.0
    up = down = 0.0
    mean_sum, mean_count, run, level = 0.0, len(reference), 0, 0
    events = []
    for index, x in enumerate(values):
        z = (x - mu) / sigma
        run += 1
        mean_sum += z
        mean_count += 1
        d = z - mean_sum / mean_count
        up = max(0.0, alpha * up + d - delta)
        down = max(0.0, alpha * down - d - delta)
        ph = {"up": up, "down": down, "both": max(up, down)}[direction]
        if run >= min_samples:  # otherwise the level carries over
            new = 2 if ph > threshold else 1 if ph > warning else 0
            if new > level:
                regime = mean_sum / mean_count  # the mean since the restart, in z units
                leading_up = direction == "up" or (direction == "both" and up >= down)
                toward = abs(regime) > delta and (regime < 0 if leading_up else regime > 0)
                events.append((index, new, ph, toward) if with_toward else (index, new, ph))
            level = new
            if new == 2:
                up = down = mean_sum = 0.0
                mean_count = run = 0
    return events, level


def shifted(seed: int, segments: list[tuple[float, int]], sigma: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(mean, sigma, length) for mean, length in segments])


def drifts(events, start: int = 0) -> list[int]:
    return [event.index for event in events if event.level == "drift" and event.index >= start]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"direction": "up"},
        {"direction": "down", "delta": 0.1, "threshold": 8.0},
        {"alpha": 0.99, "threshold": 6.0, "warning_threshold": 2.0, "min_samples": 5},
        {"alpha": 0.9, "threshold": 3.0, "delta": 0.05, "min_samples": 1},  # rebases every 284 samples
        {"alpha": 0.5, "threshold": 1.5, "delta": 0.0, "min_samples": 3},  # rebases every 43 samples
    ],
)
def test_matches_the_documented_formula(params):
    reference = np.random.default_rng(1).normal(2.0, 3.0, 300)
    stream = shifted(2, [(2.0, 1500), (4.0, 700), (0.5, 900), (2.0, 600), (5.0, 800)], sigma=3.0)
    expected, level = oracle(stream.tolist(), reference.tolist(), **params)
    detector = PageHinkley(reference=reference, **params)
    got = detector.update(stream)
    assert sum(code == 2 for _, code, _ in expected) >= 2, "the stream should exercise restarts"
    assert [(e.index, LEVEL[e.level]) for e in got] == [(i, code) for i, code, _ in expected]
    np.testing.assert_allclose([e.statistic for e in got], [s for _, _, s in expected], rtol=1e-9, atol=1e-9)
    assert LEVEL[detector.level] == level


@pytest.mark.parametrize("direction", ["both", "up", "down"])
def test_toward_reference_follows_the_documented_rule(direction):
    reference = np.random.default_rng(1).normal(2.0, 3.0, 300)
    # Away from the reference and back, both ways.
    stream = shifted(3, [(2.0, 800), (5.0, 700), (2.0, 900), (-1.0, 700), (2.0, 900)], sigma=3.0)
    params = {"direction": direction}
    expected, _ = oracle(stream.tolist(), reference.tolist(), with_toward=True, **params)
    got = PageHinkley(reference=reference, **params).update(stream)
    assert [(e.index, LEVEL[e.level], e.toward_reference) for e in got] == [(i, c, t) for i, c, _, t in expected]
    if direction == "both":  # a one-sided test restarts only on its own side
        assert {t for *_, t in expected} == {True, False}, "the stream should go away and come back"


# -- batch, sample by sample, snapshots ----------------------------------------------------

parameters = st.fixed_dictionaries(
    {
        "delta": st.sampled_from([0.0, 0.1, 0.25]),
        "threshold": st.sampled_from([2.0, 5.0, 20.0]),
        "alpha": st.sampled_from([1.0, 0.999, 0.9, 0.5]),
        "min_samples": st.integers(1, 12),
        "direction": st.sampled_from(["up", "down", "both"]),
        "reference_size": st.integers(2, 40),
    }
)
streams = st.builds(
    lambda seed, segments, holes: with_holes(shifted(seed, segments), holes),
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(st.floats(-3, 3), st.integers(1, 80)), min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from([math.nan, math.inf, -math.inf])), max_size=3),
)






@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    params=parameters, values=streams, with_reference=st.booleans(), splits=st.lists(st.integers(0, 10**6), max_size=6)
)
def test_batch_equals_sample_by_sample(params, values, with_reference, splits):
    reference = np.random.default_rng(0).normal(0.0, 1.0, 50) if with_reference else None
    whole = PageHinkley(reference=reference, **params)
    pieces = PageHinkley(reference=reference, **params)
    single = PageHinkley(reference=reference, **params)
    expected = run_in_pieces(whole, values, [])
    assert run_in_pieces(pieces, values, splits) == expected
    assert run_in_pieces(single, values, range(len(values))) == expected
    assert pieces.snapshot() == whole.snapshot() == single.snapshot()
    assert pieces.state == whole.state == single.state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=parameters, values=streams, with_reference=st.booleans(), cut=st.integers(0, 10**6))
def test_snapshot_restore_continue_equals_never_stopping(params, values, with_reference, cut):
    reference = np.random.default_rng(0).normal(0.0, 1.0, 50) if with_reference else None
    cut %= len(values) + 1
    never = PageHinkley(reference=reference, **params)
    expected = run_in_pieces(never, values, [cut])
    first = PageHinkley(reference=reference, **params)
    before = run_in_pieces(first, values[:cut], [])
    saved = json.loads(json.dumps(first.snapshot(), allow_nan=False))
    second = PageHinkley(reference=reference, **params)
    second.restore(saved)
    after = [(cut + i, level, s, t) for i, level, s, t in run_in_pieces(second, values[cut:], [])]
    assert before + after == expected
    assert second.snapshot() == never.snapshot()
    assert second.state == never.state


def test_restore_refuses_other_parameters():
    detector = PageHinkley(reference=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="parameters"):
        PageHinkley(reference=[0.0, 1.0, 2.0], threshold=10.0).restore(detector.snapshot())


# -- quality targets (fixed seeds) -----------------------------------------------------------


def test_false_alarms_on_unit_noise_stay_below_one_in_ten_thousand():
    """Target: at most 0.1 false alarms per 1,000 N(0,1) samples (river's defaults: ~0.66)."""
    alarms, samples = 0, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        detector = PageHinkley()  # reference: the first 500 samples of the stream
        alarms += len(drifts(detector.update(rng.normal(0.0, 1.0, 50_500))))
        samples += 50_000
    assert 1000 * alarms / samples <= 0.1  # measured: 3 alarms in 1,000,000 samples (0.003)


def test_half_sigma_shift_is_found_within_300_samples_median():
    """Target: median delay at most 300 samples for a 0.5 sigma shift, over 25 seeds."""
    delays = []
    for seed in range(25):
        stream = shifted(1000 + seed, [(0.0, 2500), (0.5, 2000)])
        found = drifts(PageHinkley().update(stream), start=2500)
        delays.append(found[0] - 2500 if found else math.inf)
    assert np.median(delays) <= 300  # measured: 79
    # Measured: 24 of 25 found within 141 samples. Seed 1021 raises a false alarm 155
    # samples before the change; the restarted running mean then absorbs the shift.
    assert sum(delay > 300 for delay in delays) <= 1


def test_integer_stream_from_two_to_eight_values():
    """{0,1} then {0..7}: no alarm before the change, drift within 20 samples after it."""
    for seed in range(10):
        rng = np.random.default_rng(seed)
        stream = np.concatenate([rng.integers(0, 2, 1500), rng.integers(0, 8, 500)]).astype(float)
        found = drifts(PageHinkley().update(stream))  # reference: the first 500 values
        assert found and found[0] >= 1500, (seed, found)
        assert found[0] - 1500 <= 20, (seed, found)  # measured: 1 to 6


def test_alternating_small_mean_shifts_are_each_found_once():
    """0 → +0.5σ → 0 → +0.5σ → 0: one drift within 300 samples of each change, none elsewhere."""
    changes = [1500, 3000, 4500, 6000]
    for seed in range(8):
        stream = shifted(seed, [(0.0, 1500), (0.5, 1500), (0.0, 1500), (0.5, 1500), (0.0, 1500)])
        found = drifts(PageHinkley().update(stream))
        assert len(found) == len(changes), (seed, found)
        for change, index in zip(changes, found):
            assert 0 <= index - change <= 300, (seed, found)  # measured: 16 to 160


def test_standardising_makes_thresholds_scale_free():
    """The same stream in other units raises the same events."""
    stream = shifted(5, [(0.0, 2000), (0.7, 500)])
    reference = np.random.default_rng(6).normal(0.0, 1.0, 500)
    plain = [(e.index, e.level) for e in PageHinkley(reference=reference).update(stream)]
    scaled = [(e.index, e.level) for e in PageHinkley(reference=reference * 250 + 1e4).update(stream * 250 + 1e4)]
    assert plain == scaled and drifts(PageHinkley(reference=reference).update(stream))


# -- directions, levels and the hold after a drift ------------------------------------------


def test_directions_see_only_their_side():
    reference = np.random.default_rng(3).normal(0.0, 1.0, 500)
    fall = shifted(4, [(0.0, 1000), (-1.0, 500)])
    assert drifts(PageHinkley(reference=reference, direction="down").update(fall), start=1000)
    assert not drifts(PageHinkley(reference=reference, direction="up").update(fall))
    assert drifts(PageHinkley(reference=reference, direction="both").update(fall), start=1000)
    rise = shifted(4, [(0.0, 1000), (1.0, 500)])
    assert drifts(PageHinkley(reference=reference, direction="up").update(rise), start=1000)
    assert not drifts(PageHinkley(reference=reference, direction="down").update(rise))


def test_warning_comes_before_drift():
    stream = shifted(8, [(0.0, 1000), (0.5, 1000)])
    events = PageHinkley(reference=np.random.default_rng(9).normal(size=500)).update(stream)
    drift = next(e for e in events if e.level == "drift")
    warning = [e for e in events if e.level == "warning" and e.index < drift.index]
    assert warning and warning[-1].statistic > 15.0 and warning[-1].threshold == 15.0
    assert drift.statistic > 20.0 and drift.threshold == 20.0


def test_level_holds_drift_for_min_samples_then_follows_the_statistic():
    detector = PageHinkley(reference=np.random.default_rng(10).normal(size=500), min_samples=30)
    stream = shifted(11, [(0.0, 500), (3.0, 1000)])
    for position, value in enumerate(stream):
        if drifts(detector.update([value])):
            break
    assert 500 <= position < 520 and detector.level == "drift"
    assert detector.state.statistic == 0.0  # restarted at the drift sample
    levels = []
    for value in stream[position + 1 : position + 31]:
        detector.update([value])
        levels.append(detector.level)
    assert levels[:29] == ["drift"] * 29  # held while the fresh statistic is not tested
    assert levels[29] == "ok"  # tested again, on the new regime


def test_a_drift_at_the_end_of_the_hold_restarts_without_a_second_event():
    detector = PageHinkley(reference=[0.0, 1.0] * 5, threshold=5.0, delta=0.0, min_samples=5)
    assert drifts(detector.update([0.5] * 5 + [100.0])) == [5]
    assert detector.update([0.5] * 4 + [100.0]) == []  # tested at the 5th sample: drift, still held
    assert detector.level == "drift" and detector.snapshot()["state"]["run"] == 0  # restarted again
    assert detector.update([0.5] * 5) == [] and detector.level == "ok"
    assert drifts(detector.update([100.0])) == [0]  # a rise from ok is an event again


# -- degenerate input ------------------------------------------------------------------------


def test_constant_reference_falls_back_to_raw_units(caplog):
    with caplog.at_level(logging.WARNING, logger="monitord.drift.pht"):
        detector = PageHinkley(reference=[3.0] * 100)
    assert "no usable spread" in caplog.text
    assert detector.update([3.0] * 1000) == []  # the constant itself is no drift
    found = drifts(detector.update(np.full(200, 4.0)))  # 1 raw unit up: 0.75 per sample past delta
    assert found and found[0] < 60
    assert all(math.isfinite(value) for value in vars(detector.state).values() if isinstance(value, float))


def test_constant_reference_from_the_stream_never_raises():
    detector = PageHinkley(reference_size=10)
    assert detector.update(np.zeros(10)) == []  # the reference: no spread
    events = detector.update(np.concatenate([np.zeros(50), np.full(50, 1e300), [-1e308] * 5]))
    assert drifts(events)
    json.dumps(detector.snapshot(), allow_nan=False)
    assert math.isfinite(detector.state.statistic)


def test_absurd_values_cannot_break_the_state():
    detector = PageHinkley(reference=np.random.default_rng(0).normal(size=100))
    detector.update([1e308, -1e308, np.nan, np.inf, 0.0] * 20)
    json.dumps(detector.snapshot(), allow_nan=False)
    assert detector.update(np.zeros(10)) is not None and math.isfinite(detector.state.statistic)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"warning_threshold": 20.0}, "below threshold"),
        ({"threshold": 0.0}, "threshold must be above 0"),
        ({"delta": -0.1}, "delta must be at least 0"),
        ({"alpha": 1.5}, "alpha must be at most 1"),
        ({"alpha": 0.0}, "alpha must be above 0"),
        ({"min_samples": 0}, "min_samples must be an integer"),
        ({"direction": "sideways"}, "direction must be one of"),
        ({"threshold": math.nan}, "finite number"),
    ],
)
def test_bad_parameters_say_what_is_wrong(params, message):
    with pytest.raises(ValueError, match=message):
        PageHinkley(**params)


def test_built_from_settings_through_the_plugin():
    assert detector_class("pht") is PageHinkley
    spec = DetectorSpec(type="pht", signal="confidence", threshold=12.0, direction="down")
    detector = build_detector(PageHinkley, spec, np.linspace(0.0, 1.0, 100))
    assert detector.params() == {
        "delta": 0.25, "ert": None, "threshold": 12.0, "warning_threshold": None, "alpha": 1.0,
        "min_samples": 30, "direction": "down", "reference_size": 500,
    }
    state = detector.state
    assert (state.threshold, state.warning_threshold, state.p_value, state.reference_samples) == (12.0, 9.0, None, 100)
    with pytest.raises(ValueError, match="unknown parameter"):
        build_detector(PageHinkley, DetectorSpec(type="pht", signal="confidence", lambda_=3), None)


def test_docstring_example_holds():
    assert doctest.testmod(pht, raise_on_error=False).failed == 0
