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


def no_alarm_probability(length: int, ert: float) -> float:
    """The chance that a clean stream of ``length`` samples raises no false alarm."""
    return math.exp(-length / ert)


def stream_length_for(ert: float, *, at_most: int | None = None) -> int:
    """The simulated stream length that puts the threshold at the median of the maxima,
    where a given number of streams estimates it best, capped at ``at_most`` to bound cost."""
    length = max(1, int(round(ert * math.log(2))))
    return length if at_most is None else min(length, at_most)


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
