"""Compiled loops behind :class:`~monitord_drift.pht.PageHinkley`: its batch update and its ERT calibration.

The update (``pht_run``): in the daemon's batches of 64 the vectorised numpy scan spent most
of its time in the fixed cost of some forty array calls, and ran at about half river's
per-sample rate. One compiled pass (numba, ``cache=True``, no ``fastmath``) does the same
arithmetic in the same order (the scaled sums and their running minima, rebased at the same
block boundaries), so events, statistics and snapshots are those of the numpy scan bit for bit.

The calibration (``simulate_passages``) needs the statistic over hundreds of clean streams
of tens of thousands of samples each: tens of millions of steps, per sample a draw, the
running mean and the two clamped sums, the same recurrences as the detector's.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Standardised values are clipped to this magnitude, so that one absurd input cannot overflow
#: the sums; it is drift by any threshold anyway.
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


@njit(cache=True)
def pht_run(
    values: np.ndarray,
    center: float,
    scale: float,
    delta: float,
    up: bool,
    down: bool,
    warning: float,
    threshold: float,
    min_samples: int,
    growth: np.ndarray,
    decay: np.ndarray,
    rise_sum: float,
    rise_min: float,
    fall_sum: float,
    fall_min: float,
    age: int,
    mean_sum: float,
    mean_count: int,
    run: int,
    level: int,
    codes: np.ndarray,
    statistics: np.ndarray,
    toward: np.ndarray,
) -> tuple[float, float, float, float, int, float, int, int]:
    """The test over ``values`` from the state given; per sample the level code after it (a
    sample where no test runs carries the level before it), the statistic and whether a
    change found there points back toward the reference.

    Per side the state is the sum of increments scaled by ``growth[age]`` (alpha**-age)
    since the block start and its running minimum (with 0): the statistic is their
    difference times ``decay[age]``. After ``len(growth) - 1`` samples the block ends and the
    sums are rebased. A drift restarts everything, the running mean without its prior.
    Returns (rise_sum, rise_min, fall_sum, fall_min, age, mean_sum, mean_count, run).
    """
    block = growth.shape[0] - 1
    for t in range(values.shape[0]):
        z = (values[t] - center) / scale
        z = min(max(z, -Z_LIMIT), Z_LIMIT)
        mean_sum += z
        mean_count += 1
        run += 1
        age += 1
        deviation = z - mean_sum / mean_count
        rise = 0.0
        fall = 0.0
        if up:
            rise_sum += (deviation - delta) * growth[age]
            rise_min = min(rise_min, rise_sum)
            rise = (rise_sum - rise_min) * decay[age]
        if down:
            fall_sum += (-deviation - delta) * growth[age]
            fall_min = min(fall_min, fall_sum)
            fall = (fall_sum - fall_min) * decay[age]
        if up and down:
            statistic = max(rise, fall)
        elif up:
            statistic = rise
        else:
            statistic = fall
        statistics[t] = statistic
        # Back toward the reference: the mean since the restart (0 being the reference's)
        # lies more than delta off it and the side that leads points back.
        regime = mean_sum / mean_count
        leading_up = up and not (down and fall > rise)
        toward[t] = abs(regime) > delta and (regime < 0.0 if leading_up else regime > 0.0)
        if run >= min_samples:
            if statistic > threshold:
                level = 2
            elif statistic > warning:
                level = 1
            else:
                level = 0
        codes[t] = level
        if run >= min_samples and level == 2:
            rise_sum, rise_min, fall_sum, fall_min = 0.0, 0.0, 0.0, 0.0
            age, mean_sum, mean_count, run = 0, 0.0, 0, 0
        elif age == block:
            rise_sum, rise_min = (rise_sum - rise_min) * decay[age], 0.0
            fall_sum, fall_min = (fall_sum - fall_min) * decay[age], 0.0
            age = 0
    return rise_sum, rise_min, fall_sum, fall_min, age, mean_sum, mean_count, run
