"""NM-DDM: a kernel log-likelihood-ratio test between a reference and a window of samples."""

from __future__ import annotations

import json
import math
import numbers
import zlib
from typing import Any, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from monitord.reference_cache import active_cache
from numpy.typing import ArrayLike

from . import ert as ert_arithmetic
from .base import LEVEL_CODES, DriftDetector, Reading

# The compiled kernels (numba) are imported where first used, not here: building a
# detector without a reference, as the daemon's start-up check does, stays cheap.

#: A feature whose reference spread is below this fraction of its largest magnitude is
#: treated as constant: its spread is raised to this (see "Degenerate data").
SPREAD_FLOOR = 1e-8
#: Eigenvalues of the reference correlation matrix are raised to this, so that
#: (near-)collinear features whiten to a finite scale.
EIGENVALUE_FLOOR = 1e-6
#: Bumped whenever the calibration's simulation changes, so cached draws are not reused.
CALIBRATION_VERSION = 2
#: Bumped whenever the ``ert`` calibration's simulation changes, so cached maxima are not reused.
ERT_CALIBRATION_VERSION = 1
#: ``ert`` calibration: resampled copies of the reference, one simulated stream each ...
ERT_REFERENCES = 100
#: ... of this many evaluated samples, cut into blocks whose maxima a Gumbel law is fitted to.
ERT_STREAM = 4_000
#: Longest block (samples); shorter (ERT·ln 2) for a small ERT, so the quantile stays central.
ERT_BLOCK = 2_000
#: The warning is calibrated to this fraction of ``ert``.
WARNING_FRACTION = 0.1
#: Weight ε of the defensive (Cauchy) component mixed into both densities.
DEFENSIVE_WEIGHT = 0.01
#: Kernel values computed at once when scoring points against the reference (8 MB).
REFERENCE_CHUNK = 1 << 20
#: Windows up to this size keep the kernel value of every pair of their points (8 MB).
KERNEL_CACHE_WINDOW = 1024
#: The statistic must exceed a threshold by this much (nats) to cross it, so that rounding
#: in a window identical to a constant reference never alarms.
TOLERANCE = 1e-9


def bandwidth_factor(rule: str | float, points: int, dims: int) -> float:
    """The kernel's standard deviation in whitened units, for a KDE of ``points`` points.

    Scott (1992): ``n^(-1/(d+4))``. Silverman (1986): ``(n(d+2)/4)^(-1/(d+4))``. A number
    is taken as the factor itself.
    """
    if rule == "scott":
        return points ** (-1.0 / (dims + 4))
    if rule == "silverman":
        return (points * (dims + 2) / 4.0) ** (-1.0 / (dims + 4))
    return float(rule)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def ert_block_length(ert: float) -> int:
    """Samples per block whose maxima calibrate for ``ert``: ``ERT_BLOCK``, or ERT·ln 2 if
    shorter, so that the quantile sought, exp(-block / ert), stays within the maxima."""
    return ert_arithmetic.stream_length_for(ert, at_most=ERT_BLOCK)


def minimum_reference(window: int) -> int:
    """The smallest reference calibration accepts: the window plus half a window held out."""
    return max(window + 2, math.ceil(1.5 * window))


class NMDDM(DriftDetector):
    """Nonparametric Multidimensional Drift Detection Method (NM-DDM).

    Watches d ≥ 1 signals jointly (by default in the daemon the mean and standard
    deviation of a layer's activations) and asks whether the last ``window`` samples come
    from the distribution of the reference sample.

    **Statistic.** With p̂_R a Gaussian kernel density estimate (KDE) of the reference and
    p̂_W one of the window, both d-dimensional and joint,

        T = (1/w) Σ_{x ∈ W} log( p̂_W(x) / p̂_R(x) ),

    a plug-in estimate of the Kullback-Leibler divergence KL(window ‖ reference): the mean
    log-likelihood ratio of the window under "it comes from the window's own density"
    against "it comes from the reference's". Averaging (rather than taking the maximum
    against a fixed 0.1) matters: the largest of w noisy log-ratios is well above 0.1
    even without drift, so such a rule alarms on nearly every clean window.

    Two choices keep T's distribution under no drift stable enough to calibrate from the
    reference alone. p̂_W(x_i) leaves x_i out (likelihood cross-validation's way of
    evaluating a KDE at its own points): with the self term K(0)/w in, a window point in a
    sparse region scores about log(1 + 1/(w·p̂)), so T is dominated by the few tail
    points of each window and its null distribution depends on where the reference
    happens to be sparse; calibrated thresholds then miss the nominal alpha by a factor
    of 2 to 4. And both densities are defensive mixtures (Hesterberg 1995),
    p̂ = (1 - ε)·KDE + ε·g with ε = 0.01 and g a multivariate Cauchy: for p̂_R centred on
    the (whitened) reference with scale sqrt(1 + h²), for p̂_W centred on the window mean
    with the window's covariance, its eigenvalues raised to at least 1, plus h². Where
    the kernels carry no mass the log-ratio falls back to log(g_W/g_R): about 0 for a
    clean window's outliers, so a heavy-tailed reference (log-normal, Student t) does not
    inflate the alarm rate, yet large for a window spread far wider than the reference
    (where every window point is isolated and both KDEs are empty), and a leave-one-out
    sum of 0 is never log(0).

    **Bandwidth.** Features are first whitened with the reference: each is divided by its
    largest magnitude, centred and scaled to unit standard deviation, then rotated and
    scaled by the inverse square root of the reference's correlation matrix. In that space
    the kernel is isotropic with standard deviation h, i.e. a full-covariance bandwidth
    H = h²·Σ_ref, as in ``scipy.stats.gaussian_kde``; correlated features (an activation
    mean and its standard deviation usually are) are smoothed along their own axes. The
    factor h comes from Scott's rule ``h = w^(-1/(d+4))`` (default) or Silverman's
    ``h = (w(d+2)/4)^(-1/(d+4))``, evaluated at the window size w, and both KDEs share
    it: under no drift they then estimate the same smoothed density, and the log-ratio
    carries no bias from unequal smoothing (the reference alone could afford a narrower
    kernel, but the test compares the two).

    **Calibration.** T's null distribution depends on n, w, d, h and the data, so its
    thresholds come from the reference by Monte-Carlo: B windows of w points are drawn
    without replacement from the reference, and each is scored against a KDE of the
    *remaining* n - w reference points. Leaving the whole window out matters: a monitored
    window is independent of the reference, while a window scored against a KDE built on
    its own points looks far too familiar, giving thresholds that are too low and an
    alarm rate well above alpha. The held-out KDE has n - w points instead of n, so it is
    a little noisier than the one used when monitoring: the calibrated statistic runs
    slightly larger and the thresholds err on the conservative side (hence a reference of
    at least 1.5 × w). The thresholds are the order statistics k = ⌈(1 - α)(B + 1)⌉ of
    the B values for ``alpha_warning`` and ``alpha_drift`` (a Monte-Carlo test at level
    α) and the p-value is (1 + #{T_b ≥ T}) / (B + 1). The draws are seeded by ``seed``
    and a CRC-32 of the reference, so the same reference always yields the same
    thresholds (a restored detector recalibrates to identical values) while each adopted
    reference gets fresh draws. Cost: an n × n kernel matrix (mind the memory past
    n ≈ 5,000), then O(w²) per window: about 0.1 s for n = 500, w = 100, B = 10,000,
    but 25 times that for w = 500 (there, consider fewer ``calibration_windows`` with a
    larger ``alpha_drift``).

    **Calibration to an ERT** (``ert`` given instead of the alphas). A per-window level says
    little about a test repeated at every sample on overlapping windows: on the digits
    model's activation statistics ``alpha_drift = 1e-4`` ran 31,000–61,000 clean samples
    between false drifts, ``ert = 100_000`` 95,000 (95 %: 62,000–154,000; detectors fitted
    on bootstrap copies of the reference, streams resampled from it; benchmarks/RESULTS.md,
    "NM-DDM with ert"), 1–3 samples slower to a pixel corruption. With ``ert`` the drift
    threshold is set so that a false drift comes once in ``ert`` samples on average on
    data like the reference, the warning once in ``ert / 10`` (:mod:`monitord_drift.ert`). 100 resampled copies of the reference
    each serve as the detector's reference for a clean stream of 4,000 samples resampled
    from the reference itself (a threshold fitted on the very sample it is tested against
    is optimistic); the streams are cut into blocks of 2,000 samples (or ERT·ln 2 if
    shorter) and a Gumbel law fitted to the blocks' maxima gives the quantile
    exp(-block / ert) (``ert.threshold_for_ert_extrapolated``). Reading that quantile
    straight off simulated maxima would need about 10 × ERT simulated samples (1.4 million
    updates, 8 s of one core, for a rough threshold at ERT 100,000); the fit needs 410,000
    updates, about 2 s (window 100, a reference of 360, on a loaded 2-core machine), once
    per reference (kept in the daemon's reference cache; ``on_drift = "adopt"`` pays it
    again at each adopted reference). There is no per-window null distribution then, so
    the p-value is ``None``.

    **Window.** ``sliding``: the window holds the last w samples and T is evaluated when it
    is full and ``step`` samples have entered since the last evaluation. The per-point
    leave-one-out sums Σ_{j∈W, j≠i} K(x_i, x_j) are kept current as points enter and
    leave, and p̂_R is computed once per entering point, so a new sample costs
    O(w·d + n·d), plus O(w·d²) per evaluation (w logarithms, the window's covariance). ``tumbling``: non-overlapping
    windows, evaluated once each, emptied after. Between evaluations the level holds. Until
    the first evaluation against its reference the detector is not ready (no statistic).
    Consecutive sliding windows overlap: alpha is the alarm rate per evaluated window,
    and a clean stream evaluated at every sample sees runs of correlated windows, not
    independent trials (a false alarm tends to last a few samples).

    **Levels.** warning while T exceeds the warning threshold, drift from when it exceeds
    the drift threshold until it falls back to the warning threshold: a statistic
    hovering at the drift threshold makes one drift episode (one event), not a string of
    them.

    **On drift.** ``keep``: the reference stays; the level follows T and falls back once
    the window looks like the reference again. ``adopt``: the window that raised the
    drift becomes the start of a new reference, completed with the next
    ``reference_size - w`` samples of the stream and then recalibrated; the level stays
    at drift while it fills, then returns to ok and the window starts empty.

    **Degenerate data** never raises: a feature whose reference spread is below 1e-8 of
    its largest magnitude (a constant one, all zeros, a reference of identical points)
    gets that spread, so any visible departure from the constant is drift while identical
    values score T = 0 (and a constant that starts to vary is caught by the window's
    defensive component); correlation eigenvalues are floored at 1e-6 (collinear features);
    standardised coordinates are clipped to ±1e100 so that huge finite inputs give kernel
    values of 0, never NaN; the defensive component keeps every log-density finite; and a
    threshold must be exceeded by 1e-9 nats, so rounding alone never alarms.

    Parameters
    ----------
    window
        Samples in the window (w).
    ert
        Expected run time between false drifts on data like the reference, in samples (at
        least 100: the warning is calibrated to ``ert / 10``); ``None`` (the default): the
        thresholds come from the alphas. Give either ``ert`` or the alphas.
    alpha_warning
        Alarm rate per evaluated clean window at which the level becomes ``warning``
        (0.01 unless given). Not used with ``ert``.
    alpha_drift
        Alarm rate per evaluated clean window at which the level becomes ``drift``;
        smaller than ``alpha_warning`` (0.001 unless given). Not used with ``ert``.
    window_mode
        ``"sliding"`` or ``"tumbling"``.
    step
        Sliding mode: evaluate T every ``step`` samples (1: at every sample).
    on_drift
        ``"keep"`` the reference, or ``"adopt"`` the drifted window as the new one.
    bandwidth
        ``"scott"``, ``"silverman"``, or a positive number: the kernel's standard
        deviation in whitened units.
    reference_size
        Samples taken from the start of the stream as the reference when the model gives
        none (also the size of an adopted reference); at least 1.5 × ``window``.
    seed
        Seeds the calibration draws (with the reference's checksum).
    calibration_windows
        B, the reference windows drawn to calibrate; ``None``:
        ``max(1000, ⌈10 / alpha_drift⌉)``. The level of a Monte-Carlo test does not
        depend on B (the threshold is an order statistic of draws exchangeable with the
        monitored statistic); a larger B sharpens the threshold and the p-value. Not used
        with ``ert``.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.nm_ddm import NMDDM
    >>> rng = np.random.default_rng(0)
    >>> detector = NMDDM(window=100, reference=rng.normal(size=(500, 2)))
    >>> detector.update(rng.normal(size=(1000, 2)))  # clean: 901 windows, no alarm
    []
    >>> shifted = rng.normal(size=(200, 2)) + [1.0, 0.0]  # 1σ shift of the first signal
    >>> [(event.index, event.level) for event in detector.update(shifted)]
    [(22, 'warning'), (31, 'drift')]
    >>> state = detector.state
    >>> state.level, state.statistic > state.threshold, state.p_value < 0.001
    ('drift', True, True)

    References
    ----------
    D. W. Scott, *Multivariate Density Estimation: Theory, Practice, and Visualization*,
    Wiley, 1992 (the bandwidth rule n^(-1/(d+4))).
    B. W. Silverman, *Density Estimation for Statistics and Data Analysis*, Chapman & Hall,
    1986 (the multivariate normal-reference bandwidth).
    X. Song, M. Wu, C. Jermaine, S. Ranka, "Statistical change detection for
    multi-dimensional data", KDD 2007 (testing a window against a KDE of the reference).
    L. I. Kuncheva, "Change detection in streaming multivariate data using likelihood
    detectors", IEEE TKDE 25(5), 2013 (log-likelihood detectors for multivariate streams).
    T. C. Hesterberg, "Weighted average importance sampling and defensive mixture
    distributions", Technometrics 37(2), 1995 (the defensive mixture).
    B. Phipson, G. K. Smyth, "Permutation p-values should never be zero", Stat. Appl.
    Genet. Mol. Biol. 9(1), 2010 (the (1 + #)/(B + 1) Monte-Carlo p-value).
    """

    type_name = "nm_ddm"
    signals_per_sample = None

    def __init__(
        self,
        *,
        window: int = 100,
        ert: float | None = None,
        alpha_warning: float | None = None,
        alpha_drift: float | None = None,
        window_mode: str = "sliding",
        step: int = 1,
        on_drift: str = "keep",
        bandwidth: str | float = "scott",
        reference_size: int = 500,
        seed: int = 0,
        calibration_windows: int | None = None,
        reference: ArrayLike | None = None,
    ) -> None:
        ert_arithmetic.ert_instead_of(ert, alpha_warning=alpha_warning, alpha_drift=alpha_drift)  # _validate checks ert's range
        self.window = window
        self.ert = ert
        # Without ert the per-window levels (defaults 0.01 and 0.001) set the thresholds.
        self.alpha_warning = None if ert is not None else (0.01 if alpha_warning is None else alpha_warning)
        self.alpha_drift = None if ert is not None else (0.001 if alpha_drift is None else alpha_drift)
        self.window_mode = window_mode
        self.step = step
        self.on_drift = on_drift
        self.bandwidth = bandwidth
        self.reference_size = reference_size
        self.seed = seed
        self.calibration_windows = calibration_windows
        self._validate()
        self._thresholds: tuple[float, float] = (0.0, 0.0)
        self._calibration = np.empty(0)
        self._statistic: float | None = None
        self._p_value: float | None = None
        self._ring: np.ndarray | None = None
        super().__init__(reference=reference, reference_size=reference_size)

    def _validate(self) -> None:
        if not _is_integer(self.window) or self.window < 2:
            raise ValueError(f"window must be an integer of at least 2, got {self.window!r}")
        if self.ert is not None:
            ert_arithmetic.check_ert(self.ert)
            if self.ert * WARNING_FRACTION < 10:
                raise ValueError(
                    f"ert must be at least 100 samples (the warning is calibrated to ert / 10, itself at least 10), "
                    f"got {self.ert!r}"
                )
            if self.calibration_windows is not None:
                raise ValueError(
                    "calibration_windows sets the per-window calibration of alpha_drift; it does not apply with "
                    f"ert (got {self.calibration_windows!r}): leave it out"
                )
            self.ert = float(self.ert)
        for name in ("alpha_warning", "alpha_drift") if self.ert is None else ():
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
        if self.ert is None and not self.alpha_drift < self.alpha_warning:
            raise ValueError(
                f"alpha_drift ({self.alpha_drift}) must be smaller than alpha_warning ({self.alpha_warning}): "
                "drift is the rarer, stronger alarm"
            )
        if self.window_mode not in ("sliding", "tumbling"):
            raise ValueError(f"window_mode must be 'sliding' or 'tumbling', got {self.window_mode!r}")
        if not _is_integer(self.step) or self.step < 1:
            raise ValueError(f"step must be a positive integer, got {self.step!r}")
        if self.on_drift not in ("keep", "adopt"):
            raise ValueError(f"on_drift must be 'keep' or 'adopt', got {self.on_drift!r}")
        if self.bandwidth not in ("scott", "silverman") and not (
            isinstance(self.bandwidth, numbers.Real)
            and not isinstance(self.bandwidth, bool)
            and math.isfinite(self.bandwidth)
            and self.bandwidth > 0
        ):
            raise ValueError(f"bandwidth must be 'scott', 'silverman' or a positive number, got {self.bandwidth!r}")
        needed = minimum_reference(self.window)
        if not _is_integer(self.reference_size) or self.reference_size < needed:
            raise ValueError(
                f"reference_size must be an integer of at least 1.5 × window = {needed} (calibration scores "
                f"reference windows against the rest of the reference), got {self.reference_size!r}"
            )
        if not _is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        windows = self.calibration_windows
        if self.ert is None and windows is not None and (not _is_integer(windows) or windows * self.alpha_drift < 1):
            raise ValueError(
                f"calibration_windows must be an integer of at least 1 / alpha_drift = "
                f"{math.ceil(1 / self.alpha_drift)} (or unset), got {windows!r}"
            )

    # -- reference and calibration -----------------------------------------------------------

    def _fit_reference(self, reference: np.ndarray) -> None:
        count, dims = reference.shape
        needed = minimum_reference(self.window)
        if count < needed:
            raise ValueError(
                f"the reference holds {count} samples; a window of {self.window} needs at least {needed} "
                f"(1.5 × window): lower `window` or give a longer reference"
            )
        kernel_log_scale = self._fit_density(reference)
        if self.ert is None:
            self._calibrate(reference, kernel_log_scale - math.log(count - self.window))
        else:
            self._calibrate_ert(reference)
        self._reset_window(dims)
        self.level = "ok"
        self._statistic = None
        self._p_value = None

    def _fit_density(self, reference: np.ndarray) -> float:
        """Whitening, bandwidth and p̂_R for ``reference``; returns the kernel's log scale."""
        count, dims = reference.shape
        scale = np.max(np.abs(reference), axis=0)
        scale[scale == 0] = 1.0
        scaled = reference / scale
        center = scaled.mean(axis=0)
        spread = scaled.std(axis=0, ddof=1)
        constant = ~(spread > SPREAD_FLOOR)
        spread[constant] = SPREAD_FLOOR
        rotation = np.eye(dims)
        varying = np.flatnonzero(~constant)
        if len(varying):
            standard = (scaled[:, varying] - center[varying]) / spread[varying]
            correlation = np.atleast_2d(np.cov(standard, rowvar=False))
            values, vectors = np.linalg.eigh(correlation)
            values = np.maximum(values, EIGENVALUE_FLOOR)
            rotation[np.ix_(varying, varying)] = (vectors / np.sqrt(values)) @ vectors.T
        self._transform = (scale, center, spread, np.ascontiguousarray(rotation))
        h = bandwidth_factor(self.bandwidth, self.window, dims)
        self._inv_two_h2 = 1.0 / (2.0 * h * h)
        kernel_log_scale = math.log1p(-DEFENSIVE_WEIGHT) - 0.5 * dims * math.log(2.0 * math.pi * h * h)
        self._window_log_scale = kernel_log_scale - math.log(self.window - 1)
        self._reference_log_scale = kernel_log_scale - math.log(count)
        self._h2 = h * h
        self._defence_base = (
            math.log(DEFENSIVE_WEIGHT) + math.lgamma((1 + dims) / 2) - math.lgamma(0.5) - 0.5 * dims * math.log(math.pi)
        )
        self._defence = (self._defence_base - 0.5 * dims * math.log1p(self._h2), 1.0 / (1.0 + self._h2), (1 + dims) / 2)
        self._reference_points = self._whiten(reference)
        self._reference_t = np.ascontiguousarray(self._reference_points.T)
        return kernel_log_scale

    def _whiten(self, values: np.ndarray) -> np.ndarray:
        from . import nm_ddm_kernels as kernels

        return kernels.whiten(np.ascontiguousarray(values, dtype=np.float64), *self._transform)

    def _log_reference_density(self, points: np.ndarray) -> np.ndarray:
        """log p̂_R at whitened points: computed once per entering point."""
        from . import nm_ddm_kernels as kernels

        defence = kernels.log_defensive(points, *self._defence)
        # Rows at a time so that the kernel values stay within about 8 MB.
        rows = max(1, REFERENCE_CHUNK // len(self._reference_points))
        if len(points) <= rows:
            return self._log_reference_rows(points, defence)
        return np.concatenate([
            self._log_reference_rows(points[start : start + rows], defence[start : start + rows])
            for start in range(0, len(points), rows)
        ])

    def _log_reference_rows(self, points: np.ndarray, defence: np.ndarray) -> np.ndarray:
        from . import nm_ddm_kernels as kernels

        exponents = kernels.reference_exponents(points, self._reference_t, self._inv_two_h2)
        return kernels.log_reference_density(np.exp(exponents), exponents, self._reference_log_scale, defence)

    def _calibrate(self, reference: np.ndarray, held_log_scale: float) -> None:
        windows = self.calibration_windows or max(1000, math.ceil(10 / self.alpha_drift))
        reference_bytes = np.ascontiguousarray(reference, dtype=np.float64).tobytes()

        def simulate() -> np.ndarray:
            from . import nm_ddm_kernels as kernels

            rng = np.random.default_rng([self.seed, zlib.crc32(reference_bytes)])
            uniforms = rng.random((windows, self.window))
            gram = kernels.kernel_matrix(self._reference_points, self._inv_two_h2)
            defence = kernels.log_defensive(self._reference_points, *self._defence)
            statistics = kernels.calibration_statistics(
                gram, self._reference_points, defence, uniforms, self._window_log_scale, held_log_scale,
                self._defence_base, self._h2,
            )  # fmt: skip
            return np.sort(statistics)

        # The draws depend on these alone; the daemon keeps them across restarts.
        inputs = (f"v{CALIBRATION_VERSION}", json.dumps([self.window, self.bandwidth, self.seed, windows,
                                                         list(reference.shape)]), reference_bytes)
        self._calibration = active_cache().array("nm_ddm-calibration", inputs, simulate, shape=(windows,))
        self._thresholds = (self._quantile(self.alpha_warning), self._quantile(self.alpha_drift))

    def _calibrate_ert(self, reference: np.ndarray) -> None:
        """Thresholds for ``ert`` (drift) and ``ert / 10`` (warning) from simulated clean streams.

        Each of ``ERT_REFERENCES`` resampled copies of the reference is the detector's
        reference for one stream of ``ERT_STREAM`` samples resampled from the reference
        itself (a threshold fitted on the very sample it is tested against is optimistic);
        the streams are cut into blocks whose maxima give the thresholds through a fitted
        Gumbel law (``ert.threshold_for_ert_extrapolated``).
        """
        assert self.ert is not None
        reference_bytes = np.ascontiguousarray(reference, dtype=np.float64).tobytes()
        targets = (self.ert * WARNING_FRACTION, self.ert)
        blocks = [ert_block_length(target) for target in targets]
        per_stream = [ERT_STREAM // block for block in blocks]

        def simulate() -> np.ndarray:
            rng = np.random.default_rng([self.seed, zlib.crc32(reference_bytes)])
            maxima: list[list[np.ndarray]] = [[], []]
            for _ in range(ERT_REFERENCES):
                statistics = self._simulated_statistics(reference, rng)
                for which, (block, count) in enumerate(zip(blocks, per_stream)):
                    maxima[which].append(statistics[: block * count].reshape(count, block).max(axis=1))
            return np.concatenate([np.concatenate(parts) for parts in maxima])

        # The maxima depend on these alone; the daemon keeps them across restarts.
        settings = [self.window, self.window_mode, self.step, self.bandwidth, self.seed, self.ert,
                    ERT_REFERENCES, ERT_STREAM, ERT_BLOCK, list(reference.shape)]  # fmt: skip
        inputs = (f"v{ERT_CALIBRATION_VERSION}", json.dumps(settings), reference_bytes)
        maxima = active_cache().array("nm_ddm-ert-calibration", inputs, simulate,
                                      shape=(ERT_REFERENCES * sum(per_stream),))
        split = ERT_REFERENCES * per_stream[0]
        warning, drift = (
            ert_arithmetic.threshold_for_ert_extrapolated(part, block, target)
            for part, block, target in zip((maxima[:split], maxima[split:]), blocks, targets)
        )
        self._calibration = np.empty(0)
        self._thresholds = (min(warning, drift), drift)

    def _simulated_statistics(self, reference: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """T at each of ``ERT_STREAM`` samples after the window fills, of a clean stream
        resampled from ``reference``, the detector fitted on a resampled copy of it."""
        from . import nm_ddm_kernels as kernels

        copy = ert_arithmetic.resample(reference, len(reference), rng)
        stream = np.ascontiguousarray(ert_arithmetic.resample(reference, self.window - 1 + ERT_STREAM, rng))
        twin = NMDDM(window=self.window, window_mode=self.window_mode, step=self.step, bandwidth=self.bandwidth,
                     reference_size=self.reference_size)  # fmt: skip
        twin._fit_density(copy)
        twin._reset_window(reference.shape[1])
        points = twin._whiten(stream)
        codes = np.empty(len(stream), dtype=np.int64)
        statistics = np.empty(len(stream))
        kernels.monitor(
            points, twin._log_reference_density(points), stream, twin._ring, twin._ring_raw, twin._ring_sums,
            twin._ring_log_reference, twin._ring_kernels, twin._counters, twin._last, self.window_mode == "sliding",
            self.step, twin._inv_two_h2, twin._window_log_scale, twin._defence_base, twin._h2,
            math.inf, math.inf, TOLERANCE, 0, False, codes, statistics,
        )  # fmt: skip
        return statistics[self.window - 1 :]

    def _quantile(self, alpha: float) -> float:
        size = len(self._calibration)
        rank = min(size, max(1, math.ceil((1.0 - alpha) * (size + 1) - 1e-9)))
        return float(self._calibration[rank - 1])

    def _reset_window(self, dims: int) -> None:
        self._ring = np.zeros((self.window, dims))
        self._ring_raw = np.zeros((self.window, dims))
        self._ring_sums = np.zeros(self.window)
        self._ring_log_reference = np.zeros(self.window)
        # Kernel values between window slots, so a leaving point costs no exp (w² floats).
        cached = self.window <= KERNEL_CACHE_WINDOW
        self._ring_kernels = np.zeros((self.window, self.window) if cached else (0, 0))
        self._counters = np.zeros(3, dtype=np.int64)
        self._last = np.full(1, np.nan)

    # -- monitoring --------------------------------------------------------------------------

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        from . import nm_ddm_kernels as kernels

        events: list[DriftEvent] = []
        position = 0
        while position < len(values):
            if self.reference is None:  # an adopted reference is still filling up
                position += self._collect_reference(values[position:])
                continue
            rest = np.ascontiguousarray(values[position:])
            points = self._whiten(rest)
            log_reference = self._log_reference_density(points)
            codes = np.empty(len(rest), dtype=np.int64)
            statistics = np.empty(len(rest))
            adopt = self.on_drift == "adopt"
            warning, drift = self._thresholds
            used = kernels.monitor(
                points, log_reference, rest, self._ring, self._ring_raw, self._ring_sums,
                self._ring_log_reference, self._ring_kernels, self._counters, self._last, self.window_mode == "sliding",
                self.step, self._inv_two_h2, self._window_log_scale, self._defence_base, self._h2,
                warning, drift, TOLERANCE,
                LEVEL_CODES[self.level], adopt, codes, statistics,
            )  # fmt: skip
            if not math.isnan(self._last[0]):
                self._statistic = float(self._last[0])
                self._p_value = self._p_value_of(self._statistic)
            for event in self._events_from_codes(codes[:used], statistics[:used], {1: warning, 2: drift}):
                events.append(DriftEvent(event.index + position, event.level, event.statistic, event.threshold))
            position += used
            if adopt and self.level == "drift":
                self._begin_adoption()
        return events

    def _begin_adoption(self) -> None:
        """Seed the next reference with the drifted window; the stream completes it."""
        head = int(self._counters[0])
        window = np.roll(self._ring_raw, -head, axis=0).copy()
        self.reference = None
        self._ring = None
        self._warmup, self._warmup_count = [window], len(window)

    def _p_value_of(self, statistic: float) -> float | None:
        size = len(self._calibration)
        if size == 0:
            return None  # calibrated to an ERT: no per-window null distribution to rank T in
        above = size - int(np.searchsorted(self._calibration, statistic, side="left"))
        return (1 + above) / (size + 1)

    def _reading(self) -> Reading:
        warning, drift = self._thresholds
        statistic = math.nan if self._statistic is None else self._statistic
        return Reading(statistic, drift, self._p_value, warning)

    def _samples_to_test(self) -> int:
        # Ready from the first evaluation against the current reference (an adopted one
        # starts a new count); tumbling windows empty after each, the level holds between.
        if self._ring is not None and self._statistic is not None:
            return 0
        count, since = (0, 0) if self._ring is None else (int(self._counters[1]), int(self._counters[2]))
        needed = self.window - count
        return max(needed, self.step - since) if self.window_mode == "sliding" else needed

    # -- snapshots ---------------------------------------------------------------------------

    def _snapshot_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "statistic": self._statistic,
            "p_value": self._p_value,
            "thresholds": list(self._thresholds),
        }
        if self._ring is not None:
            head, count, since = (int(value) for value in self._counters)
            order = (head + np.arange(count)) % self.window
            state["window"] = {
                "values": self._ring_raw[order].tolist(),
                "sums": self._ring_sums[order].tolist(),
                "since": since,
                "last": None if math.isnan(self._last[0]) else float(self._last[0]),
            }
        return state

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        self._statistic = state["statistic"]
        self._p_value = state["p_value"]
        if self.reference is None:
            self._ring = None
            self._thresholds = (float(state["thresholds"][0]), float(state["thresholds"][1]))
            return
        window = state.get("window")
        if window is None:
            return
        values = np.asarray(window["values"], dtype=np.float64).reshape(-1, self.reference.shape[1])
        count = len(values)
        self._reset_window(self.reference.shape[1])
        if count:
            self._ring_raw[:count] = values
            points = self._whiten(values)
            self._ring[:count] = points
            self._ring_sums[:count] = window["sums"]
            self._ring_log_reference[:count] = self._log_reference_density(points)
            if len(self._ring_kernels):
                from . import nm_ddm_kernels as kernels

                self._ring_kernels[:count, :count] = kernels.kernel_matrix(points, self._inv_two_h2)
        self._counters[:] = (0, count, int(window["since"]))
        self._last[0] = np.nan if window["last"] is None else window["last"]
