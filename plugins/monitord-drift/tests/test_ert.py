"""The ERT arithmetic every calibrated detector shares, checked where the answer is known:
a statistic drawn independently at each sample from U(0, 1) alarms above h with probability
1 - h per sample, so its expected run time is 1 / (1 - h)."""

import math

import numpy as np
import pytest
from monitord_drift.ert import (
    check_ert,
    run_length,
    stream_length_for,
    threshold_for_ert,
    threshold_for_ert_extrapolated,
)


def test_threshold_from_simulated_maxima_gives_the_stated_run_time():
    rng = np.random.default_rng(0)
    ert = 2_000.0
    length = stream_length_for(ert)
    maxima = rng.random((2_000, length)).max(axis=1)
    threshold = threshold_for_ert(maxima, length, ert)
    achieved = 1.0 / (1.0 - threshold)
    # 2,000 streams put the median-level quantile within a few per cent; 15 % is ~5 standard errors.
    assert ert * 0.85 < achieved < ert * 1.15


def test_too_few_streams_for_the_tail_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match=r"simulate \d+ streams"):
        threshold_for_ert(np.arange(20.0), 10, 100_000)


def test_run_length_interval_covers_the_true_run_time():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        samples = 50_000
        alarms = int(rng.poisson(samples / 5_000))
        estimate, low, high = run_length(alarms, samples)
        covered += low <= 5_000 <= high
        assert low <= estimate <= high
    assert covered >= 180  # a 95 % interval: 190 expected


def test_no_alarm_bounds_the_run_time_from_below_only():
    estimate, low, high = run_length(0, 300_000)
    assert estimate == math.inf and high == math.inf
    assert 300_000 / 3.7 < low < 300_000 / 3.6  # -ln(0.025) = 3.69


@pytest.mark.parametrize("bad", [0, 5, -1, float("nan"), True, "1e5"])
def test_ert_must_be_a_run_length(bad):
    with pytest.raises(ValueError, match="ert must be"):
        check_ert(bad)


def test_threshold_for_alarm_rate_recovers_a_known_hazard():
    # A statistic whose first passage above h is geometric with rate e^-h: the mean run at
    # h is e^h, so the threshold for an ERT of 2,000 is ln 2,000. One uniform per stream
    # keeps the passages ordered across levels, as a real path's are.
    from monitord_drift.ert import threshold_for_alarm_rate

    rng = np.random.default_rng(3)
    levels = np.linspace(1.0, 12.0, 300)
    length = 3_000
    uniforms = rng.random((4_000, 1))
    passages = np.ceil(np.log(uniforms) / np.log1p(-np.exp(-levels)))
    passages = np.where(passages <= length, passages, 0).astype(np.int64)
    threshold = threshold_for_alarm_rate(passages, levels, length, 2_000)
    assert 2_000 * 0.9 < math.exp(threshold) < 2_000 * 1.1
    grouped = threshold_for_alarm_rate(passages, levels, length, 2_000, groups=40)
    assert 2_000 * 0.9 < math.exp(grouped) < 2_000 * 1.1
    with pytest.raises(ValueError, match="cannot place a threshold"):
        threshold_for_alarm_rate(passages[:5], levels, length, 2_000)


def test_extrapolated_threshold_places_a_tail_the_block_maxima_cannot():
    # Exp(1) values alarm above h with probability e^-h per sample: a run time of e^h.
    rng = np.random.default_rng(3)
    ert, length = 100_000.0, 2_000
    maxima = rng.exponential(size=(400, length)).max(axis=1)
    with pytest.raises(ValueError, match="cannot place a threshold"):
        threshold_for_ert(maxima, length, ert)  # about 8 of 400 blocks above: too few to read off
    achieved = math.exp(threshold_for_ert_extrapolated(maxima, length, ert))
    # 400 Gumbel maxima place the 98 % quantile to about 0.2 nats (one standard error, which the
    # function adds on purpose); a factor of 2 is about 3.5 of them (0.77-1.82 over 20 seeds),
    # where the largest of the 400 maxima would give 8 and the median level 1/50.
    assert ert / 2 < achieved < ert * 2


def test_extrapolated_threshold_never_falls_below_what_the_maxima_show():
    rng = np.random.default_rng(4)
    # Uniform maxima have a bounded tail, lighter than Gumbel's: where the maxima place the
    # quantile themselves, the fit may not undercut them.
    maxima = rng.random((2_000, 100)).max(axis=1)
    direct = threshold_for_ert(maxima, 100, 500.0)
    assert threshold_for_ert_extrapolated(maxima, 100, 500.0) >= direct


def test_extrapolation_needs_enough_blocks():
    with pytest.raises(ValueError, match="at least 50 finite numbers"):
        threshold_for_ert_extrapolated(np.arange(20.0), 10, 1_000)
