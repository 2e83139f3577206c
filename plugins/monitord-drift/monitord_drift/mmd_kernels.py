"""Compiled loops behind :class:`~monitord_drift.mmd.OnlineMMD`.

The window's pairwise kernel sum is updated in O(w) per entering sample, which numpy
cannot do without a Python loop per sample; numba compiles the loops once
(``cache=True``) and needs no toolchain on the user's machine.

Sums run in a fixed order (reference rows in order, window slots from the oldest to the
newest) without ``fastmath``, and the running pair sum is recomputed from the stored
kernel values every ``w`` entries (bounding its rounding drift), counted by state that
snapshots keep: a batch update equals sample-by-sample updates, and restore-then-continue
equals never stopping, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def _kernel(a: np.ndarray, i: int, b: np.ndarray, j: int, inv_two_s2: float) -> float:
    total = 0.0
    for k in range(a.shape[1]):
        delta = a[i, k] - b[j, k]
        total += delta * delta
    return math.exp(-total * inv_two_s2)


@njit(cache=True)
def kernel_means(points: np.ndarray, reference: np.ndarray, inv_two_s2: float) -> np.ndarray:
    """(1/n) Σ_x k(x, p) for each point p: its mean kernel value against the reference."""
    out = np.empty(points.shape[0])
    n = reference.shape[0]
    for i in range(points.shape[0]):
        total = 0.0
        for j in range(n):
            total += _kernel(points, i, reference, j, inv_two_s2)
        out[i] = total / n
    return out


@njit(cache=True)
def kernel_matrix(points: np.ndarray, inv_two_s2: float) -> np.ndarray:
    """The (n, n) Gram matrix of ``points`` (1 on the diagonal)."""
    n = points.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        out[i, i] = 1.0
        for j in range(i):
            value = _kernel(points, i, points, j, inv_two_s2)
            out[i, j] = value
            out[j, i] = value
    return out


@njit(cache=True)
def _pair_sum(gram: np.ndarray, start: int, count: int) -> float:
    """Σ_{a<b} k(y_a, y_b) over the window, slots from the oldest."""
    window = gram.shape[0]
    total = 0.0
    for a in range(count):
        slot_a = (start + a) % window
        for b in range(a + 1, count):
            total += gram[slot_a, (start + b) % window]
    return total


@njit(cache=True)
def _statistic(means: np.ndarray, start: int, pair_sum: float, reference_term: float) -> float:
    """Unbiased MMD² between the full window and the reference."""
    window = means.shape[0]
    cross = 0.0
    for a in range(window):
        cross += means[(start + a) % window]
    return reference_term + 2.0 * pair_sum / (window * (window - 1.0)) - 2.0 * cross / window


@njit(cache=True)
def _level(code: int, statistic: float, warning: float, drift: float, tolerance: float) -> int:
    if statistic > drift + tolerance or (code == 2 and statistic > warning + tolerance):
        return 2
    if statistic > warning + tolerance:
        return 1
    return 0


@njit(cache=True)
def fill_gram(ring: np.ndarray, gram: np.ndarray, count: int, inv_two_s2: float) -> None:
    """Kernel values between the first ``count`` slots (a restored window)."""
    for a in range(count):
        gram[a, a] = 1.0
        for b in range(a):
            value = _kernel(ring, a, ring, b, inv_two_s2)
            gram[a, b] = value
            gram[b, a] = value


@njit(cache=True)
def monitor(
    points: np.ndarray,
    means: np.ndarray,
    ring: np.ndarray,
    ring_means: np.ndarray,
    ring_raw: np.ndarray,
    raw: np.ndarray,
    gram: np.ndarray,
    counters: np.ndarray,
    sums: np.ndarray,
    inv_two_s2: float,
    reference_term: float,
    warning: float,
    drift: float,
    tolerance: float,
    code: int,
    codes: np.ndarray,
    statistics: np.ndarray,
) -> None:
    """Slide each standardised point (its reference kernel mean in ``means``) into the window.

    ``counters`` = (oldest slot, samples in the window, entries since the pair sum was last
    recomputed); ``sums`` = (pair sum, last statistic or NaN). ``codes`` and ``statistics``
    get each sample's level code and statistic (NaN while the window fills).
    """
    window = ring.shape[0]
    dims = ring.shape[1]
    for t in range(points.shape[0]):
        start, count, since = counters[0], counters[1], counters[2]
        if count == window:
            slot = start
            start = (start + 1) % window
            count -= 1
            leaving = 0.0
            for a in range(count):
                leaving += gram[slot, (start + a) % window]
        else:
            slot = (start + count) % window
            leaving = 0.0
        for k in range(dims):
            ring[slot, k] = points[t, k]
            ring_raw[slot, k] = raw[t, k]
        ring_means[slot] = means[t]
        entering = 0.0
        for a in range(count):
            other = (start + a) % window
            value = _kernel(ring, slot, ring, other, inv_two_s2)
            gram[slot, other] = value
            gram[other, slot] = value
            entering += value
        gram[slot, slot] = 1.0
        count += 1
        since += 1
        if since >= window:
            sums[0] = _pair_sum(gram, start, count)
            since = 0
        else:
            sums[0] += entering - leaving
        counters[0], counters[1], counters[2] = start, count, since
        if count == window:
            statistic = _statistic(ring_means, start, sums[0], reference_term)
            sums[1] = statistic
            code = _level(code, statistic, warning, drift, tolerance)
            statistics[t] = statistic
        else:
            statistics[t] = np.nan
        codes[t] = code


@njit(cache=True)
def calibration_maxima(
    gram: np.ndarray, reference_means: np.ndarray, reference_terms: np.ndarray, streams: np.ndarray, window: int
) -> np.ndarray:
    """The largest statistic each simulated clean stream reaches once its window is full.

    Stream b's samples are reference rows (``streams[b]``), scored against resampled
    reference b: row i's kernel mean against it is ``reference_means[b, i]`` and its
    within-reference term ``reference_terms[b]``. Kernel values come from the reference's
    Gram matrix; the window's pair sum is updated and recomputed as :func:`monitor` does.
    """
    out = np.empty(streams.shape[0])
    ring = np.empty(window, dtype=np.int64)
    means = np.empty(window)
    for b in range(streams.shape[0]):
        start = 0
        count = 0
        since = 0
        pair_sum = 0.0
        largest = -np.inf
        for t in range(streams.shape[1]):
            row = streams[b, t]
            if count == window:
                slot = start
                start = (start + 1) % window
                count -= 1
                leaving = 0.0
                for a in range(count):
                    leaving += gram[ring[slot], ring[(start + a) % window]]
            else:
                slot = (start + count) % window
                leaving = 0.0
            entering = 0.0
            for a in range(count):
                entering += gram[row, ring[(start + a) % window]]
            ring[slot] = row
            means[slot] = reference_means[b, row]
            count += 1
            since += 1
            if since >= window:
                pair_sum = 0.0
                for a in range(count):
                    for c in range(a + 1, count):
                        pair_sum += gram[ring[(start + a) % window], ring[(start + c) % window]]
                since = 0
            else:
                pair_sum += entering - leaving
            if count == window:
                statistic = _statistic(means, start, pair_sum, reference_terms[b])
                if statistic > largest:
                    largest = statistic
        out[b] = largest
    return out
