"""Compiled loops behind :class:`~monitord_drift.class_mix.ClassMix`.

Each sample changes two class counts of the window and every class's CUSUM, and the level
depends on the level before it (hysteresis), so a batch is a sequential loop; numba
compiles it once (``cache=True``). The χ² is summed from the integer counts at every
evaluation, always over the classes in the same order, so it never carries rounding from
one sample to the next; the CUSUMs take the same steps whatever the batches. Batch updates
therefore equal sample-by-sample updates bit for bit. The calibration runs the very same
steps (:func:`stream_maxima`), so a clean stream scores exactly what it scored there.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Positions in the ``meta`` array: the oldest slot of the ring and how many it holds.
HEAD, COUNT = 0, 1


@njit(cache=True)
def _push(entering: int, ring: np.ndarray, counts: np.ndarray, meta: np.ndarray, window_size: int) -> bool:
    """Slide ``entering`` into the window; whether the window is now full."""
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
    return meta[COUNT] == window_size


@njit(cache=True)
def chi_square(counts: np.ndarray, inverse_expected: np.ndarray, window_size: int) -> float:
    """Pearson's Σ (c_k - e_k)² / e_k of a full window, written Σ c_k² / e_k - w
    (Σ c_k = Σ e_k = w), which needs only the counts."""
    total = 0.0
    for k in range(counts.shape[0]):
        c = float(counts[k])
        total += c * c * inverse_expected[k]
    return total - window_size


@njit(cache=True)
def _cusum_step(entering: int, cusums: np.ndarray, hits: np.ndarray, misses: np.ndarray) -> float:
    """One sample into every bin's two CUSUMs (its share rising: the first K entries;
    falling: the last K); returns the largest of them.

    Each adds ``hits[j]`` when the sample falls in its bin and ``misses[j]`` otherwise (the
    log-likelihood ratios of a Bernoulli step), floored at 0.
    """
    bins = cusums.shape[0] // 2
    largest = 0.0
    for j in range(cusums.shape[0]):
        step = hits[j] if j == entering or j == entering + bins else misses[j]
        value = cusums[j] + step
        if value < 0.0:
            value = 0.0
        cusums[j] = value
        if value > largest:
            largest = value
    return largest


@njit(cache=True)
def slide(
    bins: np.ndarray,
    ring: np.ndarray,
    counts: np.ndarray,
    meta: np.ndarray,
    cusums: np.ndarray,
    inverse_expected: np.ndarray,
    hits: np.ndarray,
    misses: np.ndarray,
    window_size: int,
    thresholds: np.ndarray,
    level: int,
    chi: np.ndarray,
    cusum: np.ndarray,
    codes: np.ndarray,
) -> int:
    """Push each bin; per sample the χ² and the largest CUSUM (NaN until the window is
    full) and the level code. Returns the number of level rises.

    ``thresholds``: χ² warning, χ² drift, CUSUM warning, CUSUM drift. Drift while either
    statistic is above its drift threshold, and after that until both are back at or
    below their warning thresholds; warning while either is above its warning threshold.
    """
    chi_warning, chi_drift, cusum_warning, cusum_drift = thresholds[0], thresholds[1], thresholds[2], thresholds[3]
    rises = 0
    for i in range(bins.shape[0]):
        entering = bins[i]
        full = _push(entering, ring, counts, meta, window_size)
        largest = _cusum_step(entering, cusums, hits, misses)
        if not full:
            chi[i] = np.nan
            cusum[i] = np.nan
            codes[i] = level
            continue
        statistic = chi_square(counts, inverse_expected, window_size)
        above_warning = statistic > chi_warning or largest > cusum_warning
        if statistic > chi_drift or largest > cusum_drift or (level == 2 and above_warning):
            code = 2
        elif above_warning:
            code = 1
        else:
            code = 0
        if code > level:
            rises += 1
        level = code
        chi[i] = statistic
        cusum[i] = largest
        codes[i] = code
    return rises


@njit(cache=True)
def stream_maxima(
    bins: np.ndarray,
    inverse_expected: np.ndarray,
    hits: np.ndarray,
    misses: np.ndarray,
    window_size: int,
    warning_evaluations: int,
    out: np.ndarray,
) -> None:
    """Run a fresh detector over ``bins`` (no thresholds); into ``out`` the largest χ² and
    CUSUM over the first ``warning_evaluations`` evaluations (full windows), then over all."""
    ring = np.zeros(window_size, dtype=np.int64)
    counts = np.zeros(inverse_expected.shape[0], dtype=np.int64)
    meta = np.zeros(2, dtype=np.int64)
    cusums = np.zeros(hits.shape[0])
    evaluations = 0
    out[:] = -np.inf
    for i in range(bins.shape[0]):
        entering = bins[i]
        full = _push(entering, ring, counts, meta, window_size)
        largest = _cusum_step(entering, cusums, hits, misses)
        if not full:
            continue
        statistic = chi_square(counts, inverse_expected, window_size)
        if evaluations < warning_evaluations:
            out[0] = max(out[0], statistic)
            out[1] = max(out[1], largest)
        out[2] = max(out[2], statistic)
        out[3] = max(out[3], largest)
        evaluations += 1
