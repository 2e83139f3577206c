"""Compiled loops behind :class:`~monitord_drift.nm_ddm.NMDDM`.

The detector's hot paths are loops over a window of points with a data-dependent exit
(a drift rise under ``on_drift="adopt"`` hands control back to Python), which numpy
cannot vectorise without O(w²) temporaries; numba compiles them once (``cache=True``)
and needs no toolchain on the user's machine.

Every function visits points in a fixed order (rows in order, window slots from the
oldest to the newest) and is compiled without ``fastmath``, so a value does not depend on
how the stream was cut into batches, nor on where a restored ring buffer starts: batch
updates equal sample-by-sample updates and restore-then-continue equals never stopping,
bit for bit. The one step outside them, the kernel values against the reference, is
numpy's ``exp`` (vectorised; the same value for an element wherever it sits in an array).
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


#: Below this a density is summed in the log domain (see ``window_log_density``).
DIRECT_FLOOR = 1e-280


@njit(cache=True)
def _window_shape(points: np.ndarray, h2: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The window's defensive Cauchy: its centre, the inverse of its shape matrix, log det.

    The shape is ``V·max(Λ, 1)·Vᵀ + h²·I``, ``VΛVᵀ`` the window covariance (whitened units):
    never narrower than the reference's own defensive component, broader where the window is.
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
    inverse = np.zeros((dims, dims))
    if dims == 1:
        shape = max(covariance[0, 0], 1.0) + h2
        inverse[0, 0] = 1.0 / shape
        return mean, inverse, math.log(shape)
    if dims == 2:  # in closed form: LAPACK's call costs more than the whole evaluation
        half = 0.5 * (covariance[0, 0] - covariance[1, 1])
        off = covariance[0, 1]
        radius = math.hypot(half, off)
        middle = 0.5 * (covariance[0, 0] + covariance[1, 1])
        # The larger eigenvalue's vector (c, s), from whichever row avoids cancellation.
        x, y = (half + radius, off) if half >= 0.0 else (off, radius - half)
        norm = math.hypot(x, y)
        c, s = (1.0, 0.0) if norm == 0.0 else (x / norm, y / norm)
        small = max(middle - radius, 1.0) + h2
        large = max(middle + radius, 1.0) + h2
        inverse[0, 0] = s * s / small + c * c / large
        inverse[1, 1] = c * c / small + s * s / large
        inverse[0, 1] = inverse[1, 0] = c * s * (1.0 / large - 1.0 / small)
        return mean, inverse, math.log(small) + math.log(large)
    values, vectors = np.linalg.eigh(covariance)
    log_det = 0.0
    for k in range(dims):
        shape = max(values[k], 1.0) + h2
        log_det += math.log(shape)
        for a in range(dims):
            for b in range(dims):
                inverse[a, b] += vectors[a, k] * vectors[b, k] / shape
    return mean, inverse, log_det


@njit(cache=True)
def _inverse_power(base: float, dims: int) -> float:
    """``base ** (-(1 + dims) / 2)`` with multiplications and one square root (no pow)."""
    power = 1.0
    for _ in range((1 + dims) // 2):
        power *= base
    if (1 + dims) % 2:
        power *= math.sqrt(base)
    return 1.0 / power


@njit(cache=True)
def window_log_density(
    points: np.ndarray, sums: np.ndarray, window_log_scale: float, log_base: float, h2: float, out: np.ndarray
) -> None:
    """``log p̂_W(x)`` for each row of the window ``points`` into ``out``.

    ``log((1-ε)c_h/(w-1) · sums[i] + ε·g_W(x_i))``, ``sums[i]`` the leave-one-out kernel sum
    and g_W the window's multivariate Cauchy (``_window_shape``). ``log_base`` holds log ε and
    the shape-free part of g's normalisation. The sum is formed directly (one logarithm a
    point: this is most of an evaluation's cost) and in the log domain only where it is too
    small to be formed so (a point far from everything).
    """
    count, dims = points.shape
    mean, inverse, log_det = _window_shape(points, h2)
    exponent = 0.5 * (1 + dims)
    log_constant = log_base - 0.5 * log_det
    kernel_factor = math.exp(window_log_scale)
    defence_factor = math.exp(log_constant)
    centred = np.empty(dims)
    for i in range(count):
        for k in range(dims):
            centred[k] = points[i, k] - mean[k]
        quadratic = 0.0
        for a in range(dims):
            row = 0.0
            for b in range(dims):
                row += inverse[a, b] * centred[b]
            quadratic += centred[a] * row
        density = kernel_factor * sums[i] + defence_factor * _inverse_power(1.0 + quadratic, dims)
        if density > DIRECT_FLOOR:
            out[i] = math.log(density)
        else:
            log_defence = log_constant - exponent * math.log1p(quadratic)
            out[i] = _log_add(window_log_scale + _log_or_minus_inf(sums[i]), log_defence)


@njit(cache=True)
def reference_exponents(points: np.ndarray, reference_t: np.ndarray, inv_two_h2: float) -> np.ndarray:
    """``-|x_i - r_k|² / 2h²`` for every row i of ``points`` and column k of ``reference_t``.

    The reference comes transposed (one row per feature) so that the innermost loop runs
    over reference points and compiles to vector instructions.
    """
    rows, dims = points.shape
    count = reference_t.shape[1]
    out = np.zeros((rows, count))
    for i in range(rows):
        row = out[i]
        for k in range(dims):
            x = points[i, k]
            feature = reference_t[k]
            for j in range(count):
                delta = x - feature[j]
                row[j] += delta * delta
        for j in range(count):
            row[j] = -row[j] * inv_two_h2
    return out


@njit(cache=True)
def log_reference_density(
    kernels: np.ndarray, exponents: np.ndarray, log_scale: float, log_defence: np.ndarray
) -> np.ndarray:
    """``log p̂_R(x)`` for each row: ``log((1-ε)/n · c_h · Σ_k K(x, r_k) + ε·g(x))``.

    ``kernels`` holds ``exp(exponents)`` (numpy's exp: vectorised, several times faster
    than a compiled loop of scalar exps, and most of the detector's cost). A row whose
    kernel sum is too small to trust (a point far from every reference point) is summed
    again as a log-sum-exp, so it gets a large negative value instead of log(0).
    """
    rows, count = kernels.shape
    out = np.empty(rows)
    for i in range(rows):
        # Eight running sums in a fixed order: faster than one, and the same in any batch.
        partial = np.zeros(8)
        body = count - count % 8
        for j in range(0, body, 8):
            for lane in range(8):
                partial[lane] += kernels[i, j + lane]
        total = 0.0
        for lane in range(8):
            total += partial[lane]
        for j in range(body, count):
            total += kernels[i, j]
        if total > DIRECT_FLOOR:
            out[i] = _log_add(log_scale + math.log(total), log_defence[i])
            continue
        largest = -np.inf
        for j in range(count):
            if exponents[i, j] > largest:
                largest = exponents[i, j]
        total = 0.0
        for j in range(count):
            total += math.exp(exponents[i, j] - largest)
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
    log_window = np.empty(width)
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
        window_log_density(drawn, inside, window_log_scale, log_base, h2, log_window)
        total = 0.0
        for a in range(width):
            point = permutation[a]
            outside = rowsum[point] - 1.0 - inside[a]
            log_held = _log_add(held_log_scale + _log_or_minus_inf(outside), log_defence[point])
            total += log_window[a] - log_held
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
    ring_kernels: np.ndarray,
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

    ``ring_kernels``, when it is ``(w, w)``, holds the kernel value of every pair of window
    slots, so a leaving point's values are looked up instead of computed again (an empty
    array: computed). ``counters`` holds [head, count, samples since the last evaluation]; ``last[0]`` the
    last statistic. A tumbling window is emptied after each evaluation (``ring_raw`` still
    holds the evaluated window from slot 0 until the next point). ``ring_sums[j]`` is the
    leave-one-out kernel sum ``Σ_{i∈W, i≠j} K(x_j, x_i)``, kept current as points enter
    and leave: O(w·d) per point, plus O(w) logarithms per evaluation. A drift lasts until
    the statistic falls to the warning threshold. Stops right after a rise to drift when
    ``stop_on_drift``.
    """
    width = ring.shape[0]
    dims = ring.shape[1]
    cached = ring_kernels.shape[0] == width
    ordered = np.empty((width, dims))
    ordered_sums = np.empty(width)
    log_window = np.empty(width)
    head = counters[0]
    count = counters[1]
    since = counters[2]
    for t in range(points.shape[0]):
        new_sum = 0.0
        if count == width:
            leaving = head  # the new point takes its slot
            for q in range(1, count):
                j = (head + q) % width
                if cached:
                    gone = ring_kernels[j, leaving]
                else:
                    gone = math.exp(-_squared_distance(ring, j, ring, leaving) * inv_two_h2)
                came = math.exp(-_squared_distance(ring, j, points, t) * inv_two_h2)
                if cached:
                    ring_kernels[j, leaving] = came
                    ring_kernels[leaving, j] = came
                ring_sums[j] = ring_sums[j] - gone + came
                new_sum += came
            head = (head + 1) % width
            count -= 1
        else:
            tail = (head + count) % width
            for q in range(count):
                j = (head + q) % width
                came = math.exp(-_squared_distance(ring, j, points, t) * inv_two_h2)
                if cached:
                    ring_kernels[j, tail] = came
                    ring_kernels[tail, j] = came
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
                ordered_sums[q] = ring_sums[j]
            window_log_density(ordered, ordered_sums, window_log_scale, log_base, h2, log_window)
            total = 0.0
            for q in range(count):
                total += log_window[q] - ring_log_reference[(head + q) % width]
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
