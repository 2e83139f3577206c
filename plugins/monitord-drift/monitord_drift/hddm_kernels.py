"""Compiled sample loops behind :class:`~monitord_drift.hddm_a.HDDMA` and :class:`~monitord_drift.hddm_w.HDDMW`.

As for DDM (see ``ddm_kernels``): a batch of 64 cost the vectorised version the fixed
price of dozens of numpy (and, for HDDM_W, scipy ``lfilter``) calls. These loops do the
same arithmetic in the same order, so the numbers are unchanged bit for bit. Each writes,
per sample, the level code after it (carried where no test runs) and the statistic; state
goes in and comes out as arrays, updated in place.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def first_outside_unit(values: np.ndarray) -> int:
    """Index of the first value outside [0, 1], or -1."""
    for i in range(values.shape[0]):
        if values[i] < 0.0 or values[i] > 1.0:
            return i
    return -1


@njit(cache=True)
def hddm_a_run(
    values: np.ndarray,
    state: np.ndarray,
    cut_log: float,
    drift_log: float,
    warning_log: float,
    two_sided: bool,
    min_samples: int,
    level: int,
    codes: np.ndarray,
    statistics: np.ndarray,
) -> None:
    """HDDM_A over ``values``; ``state`` is [count, total, low_n, low_sum, high_n, high_sum, statistic].

    Cut points are kept for both sides (the decrease side only decides when two-sided);
    a cut point with 0 samples is none yet. At a drift everything restarts.
    """
    count, total = state[0], state[1]
    low_n, low_sum, high_n, high_sum = state[2], state[3], state[4], state[5]
    statistic = state[6]
    for t in range(values.shape[0]):
        count += 1.0
        total += values[t]
        mean = total / count
        bound = math.sqrt(cut_log / count)
        low_key = math.inf if low_n == 0.0 else low_sum / low_n + math.sqrt(cut_log / low_n)
        if mean + bound <= low_key:
            low_n, low_sum = count, total
        high_key = math.inf if high_n == 0.0 else -(high_sum / high_n) + math.sqrt(cut_log / high_n)
        if -mean + bound <= high_key:
            high_n, high_sum = count, total
        statistic, drift, warning = 0.0, False, False
        if low_n != count:
            m = (count - low_n) / low_n * (1.0 / count)
            difference = mean - low_sum / low_n
            drift = difference >= math.sqrt(m / 2.0 * drift_log)
            warning = difference >= math.sqrt(m / 2.0 * warning_log)
            statistic = difference * math.sqrt(2.0 / m)
        if two_sided:
            down = 0.0
            if high_n != count:
                m = (count - high_n) / high_n * (1.0 / count)
                difference = -(mean - high_sum / high_n)
                drift = drift or difference >= math.sqrt(m / 2.0 * drift_log)
                warning = warning or difference >= math.sqrt(m / 2.0 * warning_log)
                down = difference * math.sqrt(2.0 / m)
            statistic = max(statistic, down)
        if count >= min_samples:
            level = 2 if drift else (1 if warning else 0)
        codes[t] = level
        statistics[t] = statistic
        if count >= min_samples and drift:
            count, total, low_n, low_sum, high_n, high_sum, statistic = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    state[0], state[1] = count, total
    state[2], state[3], state[4], state[5] = low_n, low_sum, high_n, high_sum
    state[6] = statistic


@njit(cache=True)
def _ewma(average: float, weights: float, value: float, lambda_: float, keep: float, new_square: float,
          keep_square: float) -> tuple[float, float]:
    """One step of an EWMA and its squared-weight sum (``average`` NaN: empty; starts at the value)."""
    if math.isnan(average):
        return value, 1.0
    return keep * average + lambda_ * value, keep_square * weights + new_square


@njit(cache=True)
def hddm_w_run(
    values: np.ndarray,
    state: np.ndarray,
    lambda_: float,
    drift_log: float,
    warning_log: float,
    two_sided: bool,
    min_samples: int,
    level: int,
    codes: np.ndarray,
    statistics: np.ndarray,
) -> None:
    """HDDM_W over ``values``; ``state`` is [run, total, total weights, statistic] then, per side
    (increase, decrease), [cut key, before, before weights, since, since weights].

    An empty average is NaN (its weights 1). At a cut the average since restarts empty and
    takes the samples after it; at a drift everything restarts.
    """
    keep = 1.0 - lambda_
    new_square = lambda_ * lambda_
    keep_square = keep * keep
    run, total, total_weights, statistic = state[0], state[1], state[2], state[3]
    for t in range(values.shape[0]):
        x = values[t]
        run += 1.0
        total, total_weights = _ewma(total, total_weights, x, lambda_, keep, new_square, keep_square)
        statistic, drift, warning = 0.0, False, False
        for side in range(2):
            at = 4 + 5 * side
            sign = 1.0 if side == 0 else -1.0
            key = sign * total + math.sqrt(total_weights * drift_log / 2.0)
            if key < state[at]:
                state[at] = key
                state[at + 1], state[at + 2] = total, total_weights
                state[at + 3], state[at + 4] = math.nan, 1.0
            else:
                state[at + 3], state[at + 4] = _ewma(state[at + 3], state[at + 4], x, lambda_, keep, new_square,
                                                     keep_square)  # fmt: skip
            if side == 1 and not two_sided:
                continue
            before, since = state[at + 1], state[at + 3]
            if math.isnan(before) or math.isnan(since):  # the side's statistic is 0; it decides nothing
                if side == 1:
                    statistic = max(statistic, 0.0)
                continue
            difference = sign * (since - before)
            weights = state[at + 2] + state[at + 4]
            drift = drift or difference > math.sqrt(weights * drift_log / 2.0)
            warning = warning or difference > math.sqrt(weights * warning_log / 2.0)
            side_statistic = difference / math.sqrt(weights / 2.0)
            statistic = side_statistic if side == 0 else max(statistic, side_statistic)
        if run >= min_samples:
            level = 2 if drift else (1 if warning else 0)
        codes[t] = level
        statistics[t] = statistic
        if run >= min_samples and drift:
            run, total, total_weights, statistic = 0.0, math.nan, 1.0, 0.0
            for side in range(2):
                at = 4 + 5 * side
                state[at], state[at + 1], state[at + 2], state[at + 3], state[at + 4] = (
                    math.inf, math.nan, 1.0, math.nan, 1.0
                )
    state[0], state[1], state[2], state[3] = run, total, total_weights, statistic
