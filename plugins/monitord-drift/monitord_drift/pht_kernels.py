"""Compiled simulation behind :class:`~monitord_drift.pht.PageHinkley`'s ERT calibration.

Calibrating a threshold for an expected run time needs the statistic over hundreds of clean
streams of tens of thousands of samples each: tens of millions of steps, so one plain loop
compiled by numba (``cache=True``), per sample a draw, the running mean and the two clamped
sums, the same recurrences as the detector's vectorised scan.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Standardised values are clipped to this magnitude, as the detector does.
Z_LIMIT = 1e12


@njit(cache=True)
def simulate_passages(
    population: np.ndarray,
    streams: int,
    length: int,
    delta: float,
    alpha: float,
    up: bool,
    down: bool,
    min_samples: int,
    prior: int,
    levels: np.ndarray,
    per_reference: int,
    seed: int,
) -> np.ndarray:
    """Per clean stream and level (ascending), the sample (from 1) at which the statistic,
    tested from the ``min_samples``-th sample on, first exceeded the level; 0 if it did not
    within ``length`` samples.

    Every ``per_reference`` consecutive streams fit the detector on one bootstrap copy of
    ``population`` (its mean and standard deviation; the running mean counts that mean as ``prior`` samples, 0 for the
    test as it runs after a restart) and then draws its ``length`` samples with
    replacement from ``population`` itself, so the thresholds carry the reference's own
    sampling error.
    """
    np.random.seed(seed)
    size = population.shape[0]
    passages = np.zeros((streams, levels.shape[0]), dtype=np.int32)
    center = 0.0
    scale = 1.0
    for s in range(streams):
        if s % per_reference == 0:
            total = 0.0
            squares = 0.0
            for _ in range(size):
                value = population[np.random.randint(0, size)]
                total += value
                squares += value * value
            center = total / size
            variance = max(0.0, (squares - size * center * center) / max(1, size - 1))
            scale = np.sqrt(variance)
            if not (scale > 1e-9 * max(1.0, abs(center))):
                scale = 1.0  # as the detector does with a reference without spread
        mean_sum = 0.0
        rise = 0.0
        fall = 0.0
        reached = 0  # levels exceeded so far
        for t in range(1, length + 1):
            z = (population[np.random.randint(0, size)] - center) / scale
            z = min(max(z, -Z_LIMIT), Z_LIMIT)
            mean_sum += z
            deviation = z - mean_sum / (prior + t)
            rise = max(0.0, alpha * rise + deviation - delta)
            fall = max(0.0, alpha * fall - deviation - delta)
            if t >= min_samples:
                statistic = 0.0
                if up:
                    statistic = rise
                if down and fall > statistic:
                    statistic = fall
                while reached < levels.shape[0] and statistic > levels[reached]:
                    passages[s, reached] = t
                    reached += 1
                if reached == levels.shape[0]:
                    break
    return passages
