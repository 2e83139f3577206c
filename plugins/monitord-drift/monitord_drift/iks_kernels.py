"""Compiled alarm counting behind :class:`~monitord_drift.iks.IncrementalKS`'s ERT calibration.

The windowed KS statistic is not restarted at an alarm: the level stays ``drift`` until
``D`` falls to the warning threshold, and a window that strays once tends to stray again
soon, so alarms cluster and the quantile of simulated maxima says little of how often they
come. The calibration therefore counts the alarms themselves, with the detector's
hysteresis, on simulated ``D`` paths, for each threshold a bisection tries: one numba loop
(``cache=True``) over millions of samples per try.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def count_alarms(gaps: np.ndarray, drift: np.int64, warning: np.int64) -> np.int64:
    """Rises to ``drift`` (a gap above ``drift``) over the paths in the rows of ``gaps``,
    each starting at ``ok``, the level falling back once the gap is at most ``warning``.
    Gaps are ``D`` times the product of the two sample sizes: exact integers."""
    alarms = 0
    for row in range(gaps.shape[0]):
        raised = False
        for t in range(gaps.shape[1]):
            gap = gaps[row, t]
            if raised:
                if gap <= warning:
                    raised = False
            elif gap > drift:
                alarms += 1
                raised = True
    return alarms


def lowest_threshold(gaps: np.ndarray, budget: float, warning: int | None = None) -> int:
    """The smallest gap threshold whose alarms over ``gaps`` are at most ``budget``
    (alarms can only fall as the threshold rises), with hysteresis down to ``warning``
    (``None``: none, the level falls back as soon as the gap is at most the threshold)."""
    low, high = -1, int(gaps.max())  # alarms(high) is 0; alarms(low) is taken as too many
    while high - low > 1:
        middle = (low + high) // 2
        alarms = count_alarms(gaps, middle, middle if warning is None else min(warning, middle))
        if alarms <= budget:
            high = middle
        else:
            low = middle
    return high
