"""Bernoulli CUSUM: the power goal of issue 18 (5 % → 10 %), its false alarms, and the paper's rule as a loop.

Batches, snapshots, bad input and the docstring example are covered with the other error
detectors in test_error_detectors.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from monitord_drift.bernoulli_cusum import BernoulliCUSUM
from monitord_drift.hddm_a import HDDMA


def bernoulli(seed: int, segments: list[tuple[float, int]]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.random(length) < rate for rate, length in segments]).astype(np.float64)


def drifts(events) -> list[int]:
    return [event.index for event in events if event.level == "drift"]


def first_delays(make, seeds, change: int = 2000, after: int = 3000) -> list[float]:
    delays = []
    for seed in seeds:
        found = [i - change for i in drifts(make().update(bernoulli(seed, [(0.05, change), (0.10, after)]))) if i >= change]
        delays.append(found[0] if found else math.inf)
    return delays


def test_finds_five_to_ten_percent_within_1000_samples_in_19_of_20_streams():
    delays = first_delays(BernoulliCUSUM, range(20))
    assert sum(delay <= 1000 for delay in delays) >= 19, delays  # measured: 20 of 20, the slowest 537
    # the default it may replace finds it in far fewer: the test measures power, not luck
    assert sum(delay <= 1000 for delay in first_delays(HDDMA, range(20))) <= 12


def test_false_alarms_on_clean_five_percent_streams_stay_within_the_goal():
    """The goal: at most 0.1 false alarms per 1,000 samples, i.e. 30 in 300,000."""
    alarms = sum(len(drifts(BernoulliCUSUM().update(bernoulli(100 + seed, [(0.05, 100_000)])))) for seed in range(3))
    assert alarms <= 30  # measured: 1


def cusum_oracle(errors, odds_ratio=1.5, threshold=6.0, warning_threshold=None, min_samples=500):
    """Page's CUSUM written as in the papers, one sample at a time, with the rate learned as documented."""
    warning = threshold * 0.75 if warning_threshold is None else warning_threshold
    run = errors_seen = 0
    statistic, cost = 0.0, None
    level, events = 0, []
    for index, x in enumerate(errors):
        run += 1
        errors_seen += int(x)
        if cost is None:
            if run == min_samples:
                cost = math.log1p((odds_ratio - 1) * (errors_seen + 0.5) / (run + 1))
            continue
        statistic = max(0.0, statistic + x * math.log(odds_ratio) - cost)
        new = 2 if statistic >= threshold else 1 if statistic >= warning else 0
        if new > level:
            events.append((index, new, statistic))
        level = new
        if new == 2:
            run = errors_seen = 0
            statistic, cost = 0.0, None
        elif (run - min_samples) % min_samples == 0:
            cost = math.log1p((odds_ratio - 1) * (errors_seen + 0.5) / (run + 1))
    return events, level


@pytest.mark.parametrize(
    "params",
    [{}, {"min_samples": 300, "threshold": 4.0}, {"odds_ratio": 3.0, "threshold": 5.0, "warning_threshold": 1.0}],
)
def test_matches_the_paper_as_a_loop(params):
    stream = np.concatenate([np.zeros(200), bernoulli(5, [(0.05, 4000), (0.15, 1500), (0.05, 3000), (0.3, 500)])])
    expected, level = cusum_oracle(stream.tolist(), **params)
    detector = BernoulliCUSUM(**params)
    events = detector.update(stream)
    assert sum(code == 2 for _, code, _ in expected) >= 2, "the stream should exercise restarts"
    assert [(e.index, {"ok": 0, "warning": 1, "drift": 2}[e.level]) for e in events] == [(i, c) for i, c, _ in expected]
    np.testing.assert_allclose([e.statistic for e in events], [s for _, _, s in expected], rtol=1e-9)
    assert {"ok": 0, "warning": 1, "drift": 2}[detector.level] == level


def test_learns_the_rate_then_holds_drift_while_it_learns_the_new_one():
    detector = BernoulliCUSUM(min_samples=500)
    detector.update(bernoulli(1, [(0.05, 499)]))
    assert detector.rate is None and detector.state.samples_needed == 1 and not detector.state.ready
    detector.update(bernoulli(2, [(0.05, 1)]))
    assert 0.02 < detector.rate < 0.09 and detector.state.ready
    assert drifts(detector.update(bernoulli(3, [(0.05, 500)]))) == []
    for value in bernoulli(4, [(0.5, 500)]):
        if drifts(detector.update([value])):
            break
    else:
        pytest.fail("no drift")
    detector.update(bernoulli(5, [(0.5, 499)]))
    assert detector.level == "drift" and detector.rate is None  # learning the new rate
    detector.update(bernoulli(6, [(0.5, 1)]))
    assert 0.4 < detector.rate < 0.6  # the new rate is the normal now
    detector.update(bernoulli(7, [(0.5, 300)]))
    assert detector.level != "drift"


def test_a_clean_start_without_errors_still_lets_the_statistic_fall():
    """With no error while learning, the estimate (0.5 errors) keeps a cost per right answer."""
    detector = BernoulliCUSUM(min_samples=1000)
    detector.update(np.zeros(1000))
    assert detector.rate == pytest.approx(0.5 / 1001)
    detector.update(np.array([1.0, 1.0]))
    high = detector.state.statistic
    detector.update(np.zeros(100))
    assert detector.state.statistic < high


@pytest.mark.parametrize(
    "params, message",
    [
        ({"odds_ratio": 1.0}, "odds_ratio must be above 1"),
        ({"threshold": 0.0}, "threshold must be above 0"),
        ({"warning_threshold": 6.0}, "must be below threshold"),
        ({"min_samples": 0}, "min_samples"),
    ],
)
def test_bad_parameters_say_what_is_wrong(params, message):
    with pytest.raises(ValueError, match=message):
        BernoulliCUSUM(**params)
