"""Compiled simulation behind :class:`~monitord_drift.bernoulli_cusum.BernoulliCUSUM`'s ERT
calibration: the CUSUM, with its rate renewed as the detector renews it, over clean Bernoulli
streams, tens of millions of steps in one numba loop (``cache=True``)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def simulate_passages(
    learned_errors: int,
    min_samples: int,
    odds_ratio: float,
    streams: int,
    length: int,
    levels: np.ndarray,
    per_rate: int,
    seed: int,
) -> np.ndarray:
    """Per clean stream and level (ascending), the sample (from 1, after the rate was learned
    from ``learned_errors`` errors among ``min_samples`` samples) at which the statistic
    first reached the level; 0 if it did not within ``length`` samples.

    The rate the streams really have (one draw for every ``per_rate`` consecutive streams)
    is drawn from what those counts say of it (the Jeffreys posterior,
    Beta(k + 1/2, n - k + 1/2)), not taken as exact; the stream's errors are then drawn at
    that rate, and the test renews its estimate every ``min_samples`` samples from
    all samples since the start, as the detector does.
    """
    np.random.seed(seed)
    log_odds = np.log(odds_ratio)
    passages = np.zeros((streams, levels.shape[0]), dtype=np.int32)
    rate = 0.0
    for s in range(streams):
        if s % per_rate == 0:
            rate = np.random.beta(learned_errors + 0.5, min_samples - learned_errors + 0.5)
        errors = learned_errors
        run = min_samples
        cost = np.log1p((odds_ratio - 1.0) * (errors + 0.5) / (run + 1.0))
        statistic = 0.0
        reached = 0  # levels reached so far
        for t in range(1, length + 1):
            if np.random.random() < rate:
                errors += 1
                statistic += log_odds - cost
            else:
                statistic -= cost
            if statistic < 0.0:
                statistic = 0.0
            while reached < levels.shape[0] and statistic >= levels[reached]:
                passages[s, reached] = t
                reached += 1
            if reached == levels.shape[0]:
                break
            run += 1
            if t % min_samples == 0:
                cost = np.log1p((odds_ratio - 1.0) * (errors + 0.5) / (run + 1.0))
    return passages
