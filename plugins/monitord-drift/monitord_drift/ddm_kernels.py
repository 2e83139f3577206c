"""Compiled sample loops behind :class:`~monitord_drift.ddm.DDM` and :class:`~monitord_drift.eddm.EDDM`.

Both tests are a few arithmetic operations per sample; in the daemon's batches of 64 the
vectorised numpy version spent most of its time in the fixed cost of some thirty array
calls, and ran at half river's per-sample rate. One compiled pass over the batch, restart
included, does the same arithmetic in the same order (no ``fastmath``), so the numbers are
those of the numpy version and of the papers' loops, bit for bit.

Each loop writes, per sample, the level code after that sample (a sample where no test
runs carries the level before it) and the statistic, and returns the detector's state
after the batch.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def first_not_binary(values: np.ndarray) -> int:
    """Index of the first value that is neither 0 nor 1, or -1."""
    for i in range(values.shape[0]):
        if values[i] != 0.0 and values[i] != 1.0:
            return i
    return -1


@njit(cache=True)
def ddm_run(
    values: np.ndarray,
    count: int,
    errors: int,
    has_min: bool,
    p_min: float,
    s_min: float,
    min_samples: int,
    warning_threshold: float,
    drift_threshold: float,
    level: int,
    codes: np.ndarray,
    statistics: np.ndarray,
) -> tuple[int, int, bool, float, float]:
    """DDM over ``values`` from the state given; returns (count, errors, has_min, p_min, s_min).

    At a drift the statistics restart (count, errors and the minimum), as in the paper.
    """
    for t in range(values.shape[0]):
        count += 1
        errors += int(values[t])
        p = errors / count
        s = math.sqrt(p * (1.0 - p) / count)
        height = p + s
        tested = count >= min_samples
        if tested and s > 0.0 and (not has_min or height <= p_min + s_min):
            has_min, p_min, s_min = True, p, s
        statistic = (height - p_min) / s_min if has_min else 0.0
        if tested:
            if has_min and height >= p_min + drift_threshold * s_min:
                level = 2
            elif has_min and height >= p_min + warning_threshold * s_min:
                level = 1
            else:
                level = 0
        codes[t] = level
        statistics[t] = statistic
        if tested and level == 2:
            count, errors, has_min, p_min, s_min = 0, 0, False, 0.0, 0.0
    return count, errors, has_min, p_min, s_min


@njit(cache=True)
def eddm_run(
    values: np.ndarray,
    count: int,
    errors: int,
    last_error: int,
    distance_sum: int,
    distance_squares: int,
    best: float,
    ratio: float,
    min_errors: int,
    alpha: float,
    beta: float,
    level: int,
    codes: np.ndarray,
    statistics: np.ndarray,
) -> tuple[int, int, int, int, int, float, float]:
    """EDDM over ``values`` from the state given (``best`` -inf: none recorded yet).

    Returns (count, errors, last_error, distance_sum, distance_squares, best, ratio). At a
    drift everything restarts and the ratio is 1 again.
    """
    for t in range(values.shape[0]):
        count += 1
        if values[t] == 1.0:
            distance = count - last_error
            last_error = count
            errors += 1
            distance_sum += distance
            distance_squares += distance * distance
            if errors >= min_errors:
                mean = distance_sum / errors
                sums = float(distance_sum)
                variance = (distance_squares - sums * sums / errors) / (errors - 1) if errors > 1 else 0.0
                spread = mean + 2.0 * math.sqrt(max(variance, 0.0))
                if spread > best:
                    best = spread
                ratio = spread / best
                if ratio < beta:
                    level = 2
                elif ratio < alpha:
                    level = 1
                else:
                    level = 0
                if level == 2:
                    codes[t] = level
                    statistics[t] = ratio
                    count, errors, last_error, distance_sum, distance_squares = 0, 0, 0, 0, 0
                    best, ratio = -np.inf, 1.0
                    continue
        codes[t] = level
        statistics[t] = ratio
    return count, errors, last_error, distance_sum, distance_squares, best, ratio
