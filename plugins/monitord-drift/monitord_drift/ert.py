"""Thresholds set by the expected run time between false alarms (ERT), found by simulation.

A per-test level (``alpha``) says little to someone running a detector that tests at every
sample on overlapping windows: what they can plan with is how many clean samples pass, on
average, between two false alarms. alibi-detect's online detectors are configured that way
(Cobb et al., 2022); this module holds the arithmetic every monitord detector with an ``ert``
parameter shares.

The calibration: simulate clean streams of ``length`` samples from the reference, record the
largest statistic each reached, and take the threshold that a fraction exp(-length / ert) of
them stay under. It rests on run lengths to a rare false alarm being close to geometric (true
of CUSUMs and of windowed tests once their windows are full; Poisson clumping), so that
P(no alarm within ``length``) = exp(-length / ERT). Streams longer than the ERT put the
quantile deep in the tail; streams of about ERT·ln 2 put it near the median, where the fewest
streams estimate it well.

Simulated streams should also resample the reference the detector is fitted on: a threshold
fitted on the very sample it is tested against is optimistic (three times the false alarms
measured on class_mix), because the real stream differs from the reference by more than
resampling noise around it.

Reference: Cobb, O., Van Looveren, A. (2022). Sequential multivariate change detection with
calibrated and memoryless false detection rates. AISTATS.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

#: The expected run time every default detector is calibrated to, in samples.
DEFAULT_ERT = 100_000
#: Fewest simulated streams that must exceed the threshold for its estimate to mean anything.
MIN_STREAMS_ABOVE = 10


def check_ert(ert: float | int) -> float:
    """``ert`` as a float, or a ValueError saying what is accepted."""
    if isinstance(ert, bool) or not isinstance(ert, (int, float)) or not math.isfinite(ert) or ert < 10:
        raise ValueError(
            f"ert must be a number of samples of at least 10 (expected samples between false alarms "
            f"on data like the reference), got {ert!r}"
        )
    return float(ert)


def ert_instead_of(ert: float | int | None, **raw: object) -> float | None:
    """``ert`` checked, or None; a ValueError when a raw setting it replaces (``raw``, by
    name) is given too, since the two would say different things about the threshold."""
    given = {name: value for name, value in raw.items() if value is not None}
    if ert is not None and given:
        settings = ", ".join(f"{name} ({value!r})" for name, value in given.items())
        raise ValueError(f"give either ert ({ert!r}) or {settings}, not both: ert calibrates the thresholds")
    return None if ert is None else check_ert(ert)


def refuse_out_of_reach(detector: str, ert: float, streams: int, length: int, *, margin: float = 1.0) -> None:
    """Refuse an ERT beyond what ``streams`` simulated streams of ``length`` samples can place
    a threshold for: at the ERT about streams * length / ERT of them alarm, and at least
    ``MIN_STREAMS_ABOVE`` times ``margin`` must."""
    largest = streams * length / (margin * MIN_STREAMS_ABOVE)
    if ert > largest:
        raise ValueError(f"{detector} can calibrate an ert of at most {largest:,.0f} samples, got {ert:g}; "
                         "use a smaller ert")


def no_alarm_probability(length: int, ert: float) -> float:
    """The chance that a clean stream of ``length`` samples raises no false alarm."""
    return math.exp(-length / ert)


def stream_length_for(ert: float, *, at_most: int | None = None) -> int:
    """The simulated stream length that puts the threshold at the median of the maxima,
    where a given number of streams estimates it best, capped at ``at_most`` to bound cost."""
    length = max(1, int(round(ert * math.log(2))))
    return length if at_most is None else min(length, at_most)


def threshold_for_alarm_rate(
    passages: np.ndarray, levels: ArrayLike, length: int, ert: float, *, groups: int = 1
) -> float:
    """The threshold, among and between ``levels``, at which a detector that restarts its
    statistic at each alarm raises false alarms once every ``ert`` samples on average.

    Such a detector's false alarms form a renewal process, and when a restart leaves the
    statistic less settled than a long run does (PHT re-learns its mean, the Bernoulli
    CUSUM its rate) they cluster after restarts: run lengths are far from geometric and
    the quantile of ``threshold_for_ert`` understates the alarm rate (by 10-25 % measured
    on pht). The rate a user measures is pooled over a stream (alarms over samples), and
    over the references they might have had; so it is estimated here as alarms over
    exposure: ``passages[i, j]`` is the sample (from 1) at which stream ``i``, started as
    after a restart, first exceeded ``levels[j]`` (0: not within ``length``), each stream
    exposed until its passage or its end. The streams come in ``groups`` of equal size,
    each fitted on one resampled reference, and the rate is the mean of the groups' rates,
    so that a reference that alarms often weighs as it does in a pooled rate (a mean of
    run lengths would hide it). Early alarms after a restart count in full, so the
    estimate errs toward fewer alarms.
    """
    passages = np.asarray(passages)
    levels = np.asarray(levels, dtype=np.float64)
    check_ert(ert)
    streams = passages.shape[0]
    if groups < 1 or streams % groups:
        raise ValueError(f"{streams} streams cannot form {groups} groups of equal size")
    crossed = (passages > 0).reshape(groups, streams // groups, -1)
    exposure = np.where(passages > 0, passages, length).reshape(groups, streams // groups, -1)
    rates = (crossed.sum(axis=1) / exposure.sum(axis=1)).mean(axis=0)
    alarms = crossed.sum(axis=(0, 1))
    reached = np.flatnonzero(rates * ert <= 1.0)
    if reached.size == 0 or alarms[reached[0]] < MIN_STREAMS_ABOVE:
        raise ValueError(
            f"{streams} simulated streams of {length} samples cannot place a threshold for an ERT of {ert:g}: "
            f"fewer than {MIN_STREAMS_ABOVE} of them alarm at it; simulate more or longer streams, or use a "
            "smaller ERT"
        )
    j = int(reached[0])
    if j == 0 or rates[j] <= 0.0:
        return float(levels[j])
    # Between two levels the rate falls about exponentially: interpolate its logarithm.
    share = (math.log(rates[j - 1]) + math.log(ert)) / (math.log(rates[j - 1]) - math.log(rates[j]))
    return float(levels[j - 1] + share * (levels[j] - levels[j - 1]))


def threshold_for_ert(maxima: ArrayLike, length: int, ert: float) -> float:
    """The threshold giving an expected run time of ``ert`` samples between false alarms.

    ``maxima`` holds, for each simulated clean stream of ``length`` samples, the largest
    value its statistic reached (an alarm is a statistic *above* the threshold). The higher
    order statistic is taken, so sampling error leans toward fewer alarms.
    """
    maxima = np.asarray(maxima, dtype=np.float64).ravel()
    if maxima.size == 0 or not np.isfinite(maxima).all():
        raise ValueError("the simulated maxima must be a non-empty array of finite numbers")
    level = no_alarm_probability(length, check_ert(ert))
    above = maxima.size * (1.0 - level)
    if above < MIN_STREAMS_ABOVE:
        needed = math.ceil(MIN_STREAMS_ABOVE / (1.0 - level))
        raise ValueError(
            f"{maxima.size} simulated streams of {length} samples cannot place a threshold for an ERT of "
            f"{ert:g}: about {above:.1f} of them would exceed it and at least {MIN_STREAMS_ABOVE} must; "
            f"simulate {needed} streams or longer ones (about {stream_length_for(ert)} samples each)"
        )
    return float(np.quantile(maxima, level, method="higher"))


#: Fewest block maxima a Gumbel law is fitted to.
MIN_BLOCKS = 50


def threshold_for_ert_extrapolated(maxima: ArrayLike, length: int, ert: float) -> float:
    """The threshold giving an expected run time of ``ert`` samples, from the maxima of many
    short blocks of ``length`` samples, extrapolated through a fitted Gumbel law.

    Why: ``threshold_for_ert`` reads the quantile exp(-length / ert) straight off the
    maxima, so the blocks must be long (about ert·ln 2) or many (at least 10 of them above
    the threshold): for a detector costing microseconds per sample, tens of millions of
    simulated updates at an ERT of 100,000. The maxima of a stationary statistic over
    blocks much longer than its memory (a sliding window's width) follow a generalised
    extreme-value law, whose shape is zero (Gumbel) for statistics with exponential-type
    tails such as means of log-likelihood ratios; fitting its location and scale to a few
    hundred blocks of a couple of thousand samples places the quantile with a modest
    extrapolation. When: the statistic forgets its past within a block (a windowed test,
    not a CUSUM that restarts at alarms) and its tail is not heavier than exponential (a
    heavier one, Fréchet, would be understated). The fitted quantile is raised by one
    standard error (the Gumbel maximum-likelihood quantile's asymptotic variance,
    β²/n · (1.1087 + 0.5140·y + 0.6079·y²) at y = -ln(-ln p)): the alarm rate is convex in
    the threshold, so an unbiased but noisy threshold alarms more often than stated, and
    sampling error should lean toward fewer alarms, as ``threshold_for_ert``'s higher order
    statistic does. Where the maxima themselves place the quantile (``threshold_for_ert``'s
    condition) the higher of the two is returned, so the fit never claims a threshold the
    simulation already shows too low.
    """
    from scipy import stats  # here, not at the top: building a detector without a reference stays cheap

    maxima = np.asarray(maxima, dtype=np.float64).ravel()
    if maxima.size < MIN_BLOCKS or not np.isfinite(maxima).all():
        raise ValueError(
            f"the block maxima must be at least {MIN_BLOCKS} finite numbers to fit a Gumbel law, got {maxima.size}"
        )
    level = no_alarm_probability(length, check_ert(ert))
    if np.ptp(maxima) == 0.0:
        return float(maxima[0])  # a statistic that never varies: nothing to extrapolate
    location, scale = stats.gumbel_r.fit(maxima)
    y = -math.log(-math.log(level))
    error = scale * math.sqrt((1.1087 + 0.5140 * y + 0.6079 * y * y) / maxima.size)
    threshold = float(location + y * scale + error)
    if maxima.size * (1.0 - level) >= MIN_STREAMS_ABOVE:
        threshold = max(threshold, threshold_for_ert(maxima, length, ert))
    return threshold


def run_length(false_alarms: int, samples: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Observed samples per false alarm, with its exact Poisson confidence interval.

    Returns (estimate, low, high); with no alarm the estimate and ``high`` are infinite and
    ``low`` is the run length the stream still rules out falling below.
    """
    from scipy import stats  # here, not at the top: building a detector without a reference stays cheap

    if false_alarms < 0 or samples < 0:
        raise ValueError("false_alarms and samples must not be negative")
    tail = (1.0 - confidence) / 2.0
    high_rate = stats.chi2.ppf(1.0 - tail, 2 * (false_alarms + 1)) / 2.0
    low_rate = stats.chi2.ppf(tail, 2 * false_alarms) / 2.0 if false_alarms else 0.0
    estimate = samples / false_alarms if false_alarms else math.inf
    return estimate, samples / high_rate, (samples / low_rate if low_rate > 0 else math.inf)


def resample(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` rows drawn with replacement: a reference or a clean stream as the reference's
    population could have produced them."""
    return rows[rng.integers(0, len(rows), size=size)]
