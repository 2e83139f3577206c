"""Compiled loop behind :class:`~monitord_drift.class_mix.ClassMix`.

Each sample changes two class counts of the window, and the level depends on the level
before it (hysteresis), so a batch is a sequential loop; numba compiles it once
(``cache=True``). The statistic is summed from the integer counts at every evaluation,
always over the classes in the same order, so it never carries rounding from one sample
to the next: batch updates equal sample-by-sample updates, and a restored window gives
the same statistic as one never stopped, bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Positions in the ``meta`` array: the oldest slot of the ring and how many it holds.
HEAD, COUNT = 0, 1


@njit(cache=True)
def slide(
    bins: np.ndarray,
    ring: np.ndarray,
    counts: np.ndarray,
    meta: np.ndarray,
    inverse_expected: np.ndarray,
    window_size: int,
    warning: float,
    drift: float,
    level: int,
    statistics: np.ndarray,
    codes: np.ndarray,
) -> int:
    """Push each bin into the window; per sample, the statistic (NaN until the window is
    full) and the level code. Returns the number of level rises.

    The statistic is Pearson's Σ (c_k - e_k)² / e_k, written Σ c_k² / e_k - w (valid once
    the window is full: Σ c_k = Σ e_k = w), which needs only the counts.
    """
    rises = 0
    classes = counts.shape[0]
    for i in range(bins.shape[0]):
        entering = bins[i]
        count = meta[COUNT]
        if count == window_size:
            head = meta[HEAD]
            counts[ring[head]] -= 1
            ring[head] = entering
            meta[HEAD] = (head + 1) % window_size
        else:
            ring[(meta[HEAD] + count) % window_size] = entering
            meta[COUNT] = count + 1
        counts[entering] += 1
        if meta[COUNT] < window_size:
            statistics[i] = np.nan
            codes[i] = level
            continue
        total = 0.0
        for k in range(classes):
            c = float(counts[k])
            total += c * c * inverse_expected[k]
        statistic = total - window_size
        if statistic > drift or (level == 2 and statistic > warning):
            code = 2
        elif statistic > warning:
            code = 1
        else:
            code = 0
        if code > level:
            rises += 1
        level = code
        statistics[i] = statistic
        codes[i] = code
    return rises
