"""Compiled loops behind :class:`~monitord_drift.nm_ddm.NMDDM`.

The detector's hot paths are loops over a window of points with a data-dependent exit
(a drift rise under ``on_drift="adopt"`` hands control back to Python), which numpy
cannot vectorise without O(w²) temporaries; numba compiles them once (``cache=True``)
and needs no toolchain on the user's machine.

Every function visits points in a fixed order (rows in order, window slots from the
oldest to the newest) and is compiled without ``fastmath``, so a value does not depend on
how the stream was cut into batches, nor on where a restored ring buffer starts: batch
updates equal sample-by-sample updates and restore-then-continue equals never stopping,
bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: Standardised coordinates are clipped here so that a huge (finite) input gives a huge
#: but finite distance: no inf - inf, no NaN, a kernel value of exactly 0.
COORDINATE_LIMIT = 1e100


@njit(cache=True)
def whiten(
    values: np.ndarray, scale: np.ndarray, center: np.ndarray, spread: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Map raw rows to the space where the kernel is isotropic (see ``NMDDM``).

    ``u = clip((x / scale - center) / spread)`` then ``z = u @ rotation``. Dividing by
    ``scale`` first (the reference's largest magnitude per feature) keeps the centring
    finite for any finite input.
    """
    rows, dims = values.shape
    out = np.empty((rows, dims))
    standard = np.empty(dims)
    for i in range(rows):
        for j in range(dims):
            u = (values[i, j] / scale[j] - center[j]) / spread[j]
            if u > COORDINATE_LIMIT:
                u = COORDINATE_LIMIT
            elif u < -COORDINATE_LIMIT:
                u = -COORDINATE_LIMIT
            standard[j] = u
        for k in range(dims):
            total = 0.0
            for j in range(dims):
                total += standard[j] * rotation[j, k]
            out[i, k] = total
    return out


@njit(cache=True)
def _squared_distance(a: np.ndarray, i: int, b: np.ndarray, j: int) -> float:
    total = 0.0
    for k in range(a.shape[1]):
        delta = a[i, k] - b[j, k]
        total += delta * delta
    return total


@njit(cache=True)
def _log_add(a: float, b: float) -> float:
    """log(e^a + e^b) without overflow; either may be -inf."""
    if a < b:
        a, b = b, a
    if a == -np.inf:
        return a
    return a + math.log1p(math.exp(b - a))


@njit(cache=True)
def _log_or_minus_inf(value: float) -> float:
    return math.log(value) if value > 0.0 else -np.inf


@njit(cache=True)
def log_defensive(points: np.ndarray, log_constant: float, inv_s2: float, exponent: float) -> np.ndarray:
    """``log(ε·g(x))`` for each row, g a multivariate Cauchy of scale s centred on 0.

    ``log_constant`` holds log ε and g's normalisation, ``exponent`` is (1 + d)/2.
    """
    rows, dims = points.shape
    out = np.empty(rows)
    for i in range(rows):
        total = 0.0
        for k in range(dims):
            total += points[i, k] * points[i, k]
        out[i] = log_constant - exponent * math.log1p(total * inv_s2)
    return out


@njit(cache=True)
def window_defensive(points: np.ndarray, log_base: float, h2: float, out: np.ndarray) -> None:
    """``log(ε·g_W(x))`` for each row of the window ``points`` into ``out``.

    g_W is a multivariate Cauchy centred on the window mean with shape
    ``V·max(Λ, 1)·Vᵀ + h²·I``, where ``VΛVᵀ`` is the window covariance (whitened units):
    never narrower than the reference's own defensive component, broader where the
    window is. ``log_base`` holds log ε and the shape-free part of the normalisation.
    """
    count, dims = points.shape
    mean = np.zeros(dims)
    for i in range(count):
        for k in range(dims):
            mean[k] += points[i, k]
    for k in range(dims):
        mean[k] /= count
    covariance = np.zeros((dims, dims))
    for i in range(count):
        for k in range(dims):
            dk = points[i, k] - mean[k]
            for m in range(k, dims):
                covariance[k, m] += dk * (points[i, m] - mean[m])
    for k in range(dims):
        for m in range(k, dims):
            covariance[k, m] /= count - 1
            covariance[m, k] = covariance[k, m]
    values, vectors = np.linalg.eigh(covariance)
    shape = np.empty(dims)
    log_det = 0.0
    for k in range(dims):
        shape[k] = max(values[k], 1.0) + h2
        log_det += math.log(shape[k])
    exponent = 0.5 * (1 + dims)
    constant = log_base - 0.5 * log_det
    for i in range(count):
        quadratic = 0.0
        for k in range(dims):
            projection = 0.0
            for m in range(dims):
                projection += (points[i, m] - mean[m]) * vectors[m, k]
            quadratic += projection * projection / shape[k]
        out[i] = constant - exponent * math.log1p(quadratic)


@njit(cache=True)
def log_reference_density(
    points: np.ndarray, reference: np.ndarray, inv_two_h2: float, log_scale: float, log_defence: np.ndarray
) -> np.ndarray:
    """``log p̂_R(x)`` for each row: ``log((1-ε)/n · c_h · Σ_k K(x, r_k) + ε·g(x))``.

    The kernel sum is a log-sum-exp, so a point far from every reference point gets a
    large negative value (then the defensive term) instead of log(0).
    """
    rows = points.shape[0]
    count = reference.shape[0]
    out = np.empty(rows)
    exponents = np.empty(count)
    for i in range(rows):
        largest = -np.inf
        for k in range(count):
            e = -_squared_distance(points, i, reference, k) * inv_two_h2
            exponents[k] = e
            if e > largest:
                largest = e
        total = 0.0
        for k in range(count):
            total += math.exp(exponents[k] - largest)
        out[i] = _log_add(log_scale + largest + math.log(total), log_defence[i])
    return out


@njit(cache=True)
def kernel_matrix(points: np.ndarray, inv_two_h2: float) -> np.ndarray:
    """``exp(-|x_i - x_j|² / 2h²)`` for every pair of rows (symmetric, ones on the diagonal)."""
    count = points.shape[0]
    out = np.empty((count, count))
    for i in range(count):
        out[i, i] = 1.0
        for j in range(i + 1, count):
            value = math.exp(-_squared_distance(points, i, points, j) * inv_two_h2)
            out[i, j] = value
            out[j, i] = value
    return out


@njit(cache=True)
def calibration_statistics(
    gram: np.ndarray,
    points: np.ndarray,
    log_defence: np.ndarray,
    uniforms: np.ndarray,
    window_log_scale: float,
    held_log_scale: float,
    log_base: float,
    h2: float,
) -> np.ndarray:
    """The statistic of random reference windows against the rest of the reference.

    Row b of ``uniforms`` (shape (B, w)) draws window b without replacement by a partial
    Fisher-Yates shuffle of a running permutation (any permutation is as good a start as
    the identity, so it is never reset). For a window point i the leave-one-out window
    sum is ``Σ_{j∈W, j≠i} G[i, j]`` and the held-out sum ``rowsum(i) - 1 - that``: the
    reference KDE leaves the whole window out, as a fresh window is independent of it.
    ``window_log_scale`` and ``held_log_scale`` are ``log((1-ε) c_h / (w-1))`` and
    ``log((1-ε) c_h / (n-w))``; ``points`` the whitened reference, for the window's
    defensive component.
    """
    count = gram.shape[0]
    windows, width = uniforms.shape
    dims = points.shape[1]
    drawn = np.empty((width, dims))
    window_defence = np.empty(width)
    rowsum = np.empty(count)
    for i in range(count):
        total = 0.0
        for j in range(count):
            total += gram[i, j]
        rowsum[i] = total
    permutation = np.arange(count)
    out = np.empty(windows)
    inside = np.empty(width)
    for b in range(windows):
        for i in range(width):
            j = i + int(uniforms[b, i] * (count - i))
            if j >= count:
                j = count - 1
            swap = permutation[i]
            permutation[i] = permutation[j]
            permutation[j] = swap
        inside[:] = 0.0
        for a in range(width):
            row = gram[permutation[a]]
            partial = 0.0
            for c in range(a + 1, width):
                value = row[permutation[c]]
                partial += value
                inside[c] += value
            inside[a] += partial
        for a in range(width):
            for k in range(dims):
                drawn[a, k] = points[permutation[a], k]
        window_defensive(drawn, log_base, h2, window_defence)
        total = 0.0
        for a in range(width):
            point = permutation[a]
            outside = rowsum[point] - 1.0 - inside[a]
            log_window = _log_add(window_log_scale + _log_or_minus_inf(inside[a]), window_defence[a])
            log_held = _log_add(held_log_scale + _log_or_minus_inf(outside), log_defence[point])
            total += log_window - log_held
        out[b] = total / width
    return out


@njit(cache=True)
def monitor(
    points: np.ndarray,
    log_reference: np.ndarray,
    raw: np.ndarray,
    ring: np.ndarray,
    ring_raw: np.ndarray,
    ring_sums: np.ndarray,
    ring_log_reference: np.ndarray,
    counters: np.ndarray,
    last: np.ndarray,
    sliding: bool,
    step: int,
    inv_two_h2: float,
    window_log_scale: float,
    log_base: float,
    h2: float,
    warning_threshold: float,
    drift_threshold: float,
    tolerance: float,
    code: int,
    stop_on_drift: bool,
    codes: np.ndarray,
    statistics: np.ndarray,
) -> int:
    """Push ``points`` through the window; return how many were consumed.

    ``counters`` holds [head, count, samples since the last evaluation]; ``last[0]`` the
    last statistic. A tumbling window is emptied after each evaluation (``ring_raw`` still
    holds the evaluated window from slot 0 until the next point). ``ring_sums[j]`` is the
    leave-one-out kernel sum ``Σ_{i∈W, i≠j} K(x_j, x_i)``, kept current as points enter
    and leave: O(w·d) per point, plus O(w) logarithms per evaluation. A drift lasts until
    the statistic falls to the warning threshold. Stops right after a rise to drift when
    ``stop_on_drift``.
    """
    width = ring.shape[0]
    dims = ring.shape[1]
    ordered = np.empty((width, dims))
    window_defence = np.empty(width)
    head = counters[0]
    count = counters[1]
    since = counters[2]
    for t in range(points.shape[0]):
        new_sum = 0.0
        if count == width:
            leaving = head
            for q in range(1, count):
                j = (head + q) % width
                gone = math.exp(-_squared_distance(ring, j, ring, leaving) * inv_two_h2)
                came = math.exp(-_squared_distance(ring, j, points, t) * inv_two_h2)
                ring_sums[j] = ring_sums[j] - gone + came
                new_sum += came
            head = (head + 1) % width
            count -= 1
        else:
            for q in range(count):
                j = (head + q) % width
                came = math.exp(-_squared_distance(ring, j, points, t) * inv_two_h2)
                ring_sums[j] += came
                new_sum += came
        tail = (head + count) % width
        for k in range(dims):
            ring[tail, k] = points[t, k]
            ring_raw[tail, k] = raw[t, k]
        ring_sums[tail] = new_sum
        ring_log_reference[tail] = log_reference[t]
        count += 1
        since += 1
        previous = code
        if count == width and (not sliding or since >= step):
            for q in range(count):
                j = (head + q) % width
                for k in range(dims):
                    ordered[q, k] = ring[j, k]
            window_defensive(ordered, log_base, h2, window_defence)
            total = 0.0
            for q in range(count):
                j = (head + q) % width
                log_window = _log_add(window_log_scale + _log_or_minus_inf(ring_sums[j]), window_defence[q])
                total += log_window - ring_log_reference[j]
            statistic = total / width
            last[0] = statistic
            if statistic > drift_threshold + tolerance or (code == 2 and statistic > warning_threshold + tolerance):
                code = 2
            elif statistic > warning_threshold + tolerance:
                code = 1
            else:
                code = 0
            since = 0
            if not sliding:
                head = 0
                count = 0
        codes[t] = code
        statistics[t] = last[0]
        if stop_on_drift and code == 2 and previous < 2:
            counters[0] = head
            counters[1] = count
            counters[2] = since
            return t + 1
    counters[0] = head
    counters[1] = count
    counters[2] = since
    return points.shape[0]
