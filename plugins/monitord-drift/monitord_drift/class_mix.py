"""Class mix: the predicted classes against the reference's, by a windowed χ² and a CUSUM per class."""

from __future__ import annotations

import json
import logging
import math
import numbers
import zlib
from typing import Any, ClassVar, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from monitord.reference_cache import active_cache
from numpy.typing import ArrayLike

from .base import LEVEL_CODES, LEVELS, DriftDetector, Reading, SampleError
from .ert import DEFAULT_ERT, MIN_STREAMS_ABOVE, check_ert, no_alarm_probability, stream_length_for, threshold_for_ert

# The compiled loop (numba) is imported where first used, not here: building a detector
# without a reference, as the daemon's start-up check does, stays cheap.

log = logging.getLogger("monitord.drift.class_mix")

#: Bumped whenever the calibration's simulation changes, so cached draws are not reused.
CALIBRATION_VERSION = 2
#: Evaluations per simulated clean stream at most: bounds the calibration's cost.
_STREAM_EVALUATIONS = 20_000
#: Fewest clean streams simulated, whatever the ert.
_FEWEST_STREAMS = 400
#: Fewer reference samples per class than this and the reference says little about the mix.
_FEW_PER_CLASS = 5


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _beyond(statistic: np.ndarray | float, threshold: float) -> np.ndarray:
    """How far a statistic stands toward its threshold, as a ratio (a threshold of 0, as a
    degenerate reference can give, makes any positive value infinitely far)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num(np.asarray(statistic) / threshold, nan=0.0, posinf=np.inf)


def cusum_steps(proportions: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample log-likelihood ratios of every bin's two CUSUMs, as (hits, misses).

    For bin k of reference share p, the alternatives multiply its odds p / (1 - p) by
    ``factor`` (share rising; the first K entries) or divide them by it (falling; the last
    K). Odds, not shares, are scaled so that every alternative is a share in (0, 1) even for
    a class the reference shows in most rows. ``hits`` is log(p₁/p) (a sample of bin k),
    ``misses`` log((1 - p₁)/(1 - p)) (any other).
    """
    p = np.asarray(proportions, dtype=np.float64)
    rise = factor * p / (1.0 - p + factor * p)
    fall = p / (factor * (1.0 - p) + p)
    alternatives = np.concatenate([rise, fall])
    doubled = np.concatenate([p, p])
    hits = np.log(alternatives) - np.log(doubled)
    misses = np.log1p(-alternatives) - np.log1p(-doubled)
    return hits, misses


def joint_thresholds(chi_maxima: np.ndarray, cusum_maxima: np.ndarray, length: int, ert: float) -> tuple[float, float]:
    """Thresholds for the χ² and the CUSUM that together alarm once per ``ert`` samples.

    Both are set at the same quantile of their own streams' maxima, so each takes a like
    share of the false alarms; the quantile is found by :func:`threshold_for_ert` on each
    stream's larger rank of the two (a stream alarms exactly when that rank is above it).
    Splitting the budget in halves instead (each at 2 × ert) ignores that the two alarm
    on the same streams and was measured twice as conservative.
    """
    size = len(chi_maxima)
    chi_ranks = np.searchsorted(np.sort(chi_maxima), chi_maxima, side="right") / size
    cusum_ranks = np.searchsorted(np.sort(cusum_maxima), cusum_maxima, side="right") / size
    level = threshold_for_ert(np.maximum(chi_ranks, cusum_ranks), length, ert)
    return float(chi_maxima[chi_ranks <= level].max()), float(cusum_maxima[cusum_ranks <= level].max())


def simulate_maxima(
    reference_counts: np.ndarray,
    window: int,
    smoothing: float,
    factor: float,
    lengths: tuple[int, int],
    streams: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Largest χ² and CUSUM of ``streams`` clean streams, the reference's error included:
    rows of (χ², CUSUM) over the first ``lengths[0]`` evaluations, then (χ², CUSUM) over
    ``lengths[1]``.

    The reference's class proportions p̂ stand for the true ones (the bootstrap principle).
    Each stream gets its own reference of the same size, n counts drawn from
    Multinomial(n, p̂) and smoothed as the detector smooths them, and is itself drawn from
    p̂: the gap between the two samples is the one a monitored stream shows against the one
    saved reference. ``reference_counts`` holds one count per bin, the last bin (classes
    the reference never shows) at 0.
    """
    from . import class_mix_kernels as kernels

    n = int(reference_counts.sum())
    truth = reference_counts / n
    out = np.empty((streams, 4))
    size = window - 1 + max(lengths)
    for stream in range(streams):
        expected = smoothed_proportions(rng.multinomial(n, truth), smoothing)
        hits, misses = cusum_steps(expected, factor)
        bins = rng.choice(len(truth), size=size, p=truth)
        kernels.stream_maxima(bins, 1.0 / (window * expected), hits, misses, window, lengths[0], out[stream])
    return out


def smoothed_proportions(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """(count + smoothing) / (n + smoothing · bins) per bin, along the last axis."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + smoothing) / (counts.sum(axis=-1, keepdims=True) + smoothing * counts.shape[-1])


class ClassMix(DriftDetector):
    """Label shift: a χ² test of the predicted classes in a sliding window, and a CUSUM per
    class on its share, calibrated together to an expected run time between false alarms.

    Watches ``predicted_class`` (class indices as floats) and asks whether the mix of
    classes is the reference's: a model shown digits drawn from a few classes only, each
    image clean, changes no confidence, entropy or activation, but changes this. It is the
    black-box label-shift test of Lipton et al. and Rabanser et al. on the model's hard
    predictions (under label shift the predicted-class distribution moves with the true
    one whenever the confusion matrix is invertible).

    **Two statistics.** The window's χ² sees any change of the whole mix at once, and is
    quickest when many classes move (half the classes gone); a CUSUM per class adds up
    evidence for as long as a shift lasts, beyond any window, and is quickest when one
    class moves far (one class at 30 %) or, given a reference large enough to tell it
    from its own error, when one class moves a little. Each flags on its own threshold.

    With c_k the window's count of class k and p̃_k the reference's smoothed proportion,
    Pearson's

        X² = Σ_k (c_k - w·p̃_k)² / (w·p̃_k),    p̃_k = (n_k + s) / (n + s·K).

    The bins are the classes the reference shows plus one for every class it does not;
    the pseudo-count s (``smoothing``, 0.5 by default: Jeffreys') keeps that bin's
    expectation above 0, so a never-seen class in the window counts as heavy evidence
    instead of dividing by zero.

    For every bin, two one-sided Bernoulli CUSUMs (Page): S ← max(0, S + log-likelihood
    ratio of the sample), against the bin's odds p̃_k / (1 - p̃_k) multiplied by
    ``shift_factor`` (its share rising) or divided by it (falling); the statistic is the
    largest of the 2K. The CUSUMs start with the monitoring and are floored at 0, so a
    shift that ends lets them drain back. One update costs O(K) for both statistics.

    **Calibration.** Set by ``ert``: the expected number of clean samples between false
    drifts (evaluated samples: once the window is full). Clean streams are simulated with
    a parametric bootstrap of the reference's class counts (see :func:`simulate_maxima`):
    each stream is scored against its own resampled reference, because the real stream
    differs from the one saved reference (360 images for the digits model) by the
    sampling error of both; thresholds fitted with the reference taken as the truth
    raised 181 false drifts in 400,000 clean samples (the χ² alone, set for one per
    700,000 by the bootstrap, when measured). The two statistics share the false-alarm
    budget: each threshold is the same quantile of that statistic's simulated stream
    maxima, the quantile chosen so that either crossing happens at the rate ``ert`` asks
    for (see :func:`joint_thresholds` and :func:`monitord_drift.ert.threshold_for_ert`).
    Warning thresholds likewise for ``ert`` / 10. Streams are 20,000 evaluations long at
    most, where the false-alarm rate averaged over references is what the quantile
    matches; ``calibration_streams`` of them (by default enough for 40 to cross the drift
    thresholds, at least 400: 8 million samples, 0.4-0.7 s here for 10 classes, once per
    reference thanks to the daemon's reference cache). The cost grows with the classes
    (O(K) per sample: 2.4 s for 100, 9 s for 400) and with ``ert`` beyond 100,000 (more
    streams). The draws are seeded by ``seed`` and a CRC-32 of the class counts (not the
    rows' order: the daemon's reference is stored shuffled).

    **Measured** (benchmarks/label_shift.py, the digits model, 20 streams each, p90
    delays): only digits 0–4, 113 images; one digit at 30 %, 194; three digits doubled,
    median 908, p90 3,637 (one stream missed within 5,000): against a reference of 360
    predictions that shift is about as large as the reference's own error. Clean: 23
    false drifts in 2 million images with a fresh reference per stream, 20 with the
    model's. Clean run lengths for small settings: 4,080 samples at ``ert`` 2,000 (the
    low warning threshold holds drift episodes longer), 8,430 at 10,000.

    **Levels.** ``warning`` while either statistic exceeds its warning threshold,
    ``drift`` from when either exceeds its drift threshold until both fall back to their
    warning thresholds, so a statistic hovering about its threshold makes one drift event.
    The reference stays: the level falls back once the mix is the reference's again and
    the CUSUMs have drained. Until the window is full the detector is not ready (no
    statistic, level ``ok``). The state shows the statistic nearer (as a fraction) its
    drift threshold, with that statistic's thresholds; no p-value.

    **Inputs.** Values must be class indices: whole numbers ≥ 0 (NaN and ±inf are
    skipped, as by every detector); anything else is refused with its position. A
    reference with fewer than 5 samples per class it shows is accepted with a logged
    warning: its proportions are too rough for the test to see much beyond classes
    appearing or vanishing. A reference made of one class almost only, whose smoothed
    share falls short of the stream's, lets that class's rising CUSUM creep upward on
    clean data: such a detector sees new classes (the χ²) but eventually alarms.

    Parameters
    ----------
    window
        Predictions in the χ² window (w); evaluated at every sample once full.
    ert
        Expected clean samples between false drifts (≥ 100); warnings come ten times as often.
    shift_factor
        The change of a class's odds each CUSUM is tuned to, > 1 (3 by default: a class of
        10 % rising to 25 % or falling to 3.6 %). A CUSUM creeps upward on clean data once
        the class's true share is past about halfway to its alternative, so a small factor
        against a small reference (±16 % of a class's share for 360 images) mistakes the
        reference's own error for a shift: the calibration then raises the thresholds, and
        clean run lengths at small ``ert`` come out several times longer than set (4.4 ×
        for a factor of 2 at an ert of 2,000; 2.0 × for 3).
    smoothing
        Pseudo-count s added to every bin's reference count, > 0.
    reference_size
        Predictions taken from the start of the stream as the reference when the model
        gives none; a longer given reference is cut to this size.
    seed
        Seeds the calibration draws (with the reference's class counts).
    calibration_streams
        Clean streams simulated; ``None``: enough for 40 to exceed the drift thresholds.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.class_mix import ClassMix
    >>> rng = np.random.default_rng(0)
    >>> detector = ClassMix(reference=rng.integers(0, 10, 360).astype(float))
    >>> detector.update(rng.integers(0, 10, 2000).astype(float))  # the same ten classes
    []
    >>> half = rng.integers(0, 5, 300).astype(float)  # digits 0-4 only
    >>> [event.level for event in detector.update(half)]
    ['warning', 'drift']
    >>> state = detector.state
    >>> state.level, state.statistic > state.threshold, state.ert
    ('drift', True, 100000.0)

    References
    ----------
    K. Pearson, "On the criterion that a given system of deviations from the probable...",
    Philosophical Magazine 50(302), 1900 (the χ² goodness-of-fit statistic).
    E. S. Page, "Continuous inspection schemes", Biometrika 41(1/2), 1954 (the CUSUM).
    B. Efron, "Bootstrap methods: another look at the jackknife", Annals of Statistics
    7(1), 1979.
    Z. Lipton, Y.-X. Wang, A. Smola, "Detecting and correcting for label shift with black
    box predictors", ICML 2018.
    S. Rabanser, S. Günnemann, Z. Lipton, "Failing loudly: an empirical study of methods
    for detecting dataset shift", NeurIPS 2019 (χ² on predicted classes among them).
    """

    type_name: ClassVar[str] = "class_mix"
    #: 2: the CUSUMs joined the window (version 1 held the window only).
    snapshot_version: ClassVar[int] = 2

    def __init__(
        self,
        *,
        window: int = 200,
        ert: float = DEFAULT_ERT,
        shift_factor: float = 3.0,
        smoothing: float = 0.5,
        reference_size: int = 500,
        seed: int = 0,
        calibration_streams: int | None = None,
        reference: ArrayLike | None = None,
    ) -> None:
        self.window = window
        self.ert = check_ert(ert)
        self.shift_factor = shift_factor
        self.smoothing = smoothing
        self.reference_size = reference_size
        self.seed = seed
        self.calibration_streams = calibration_streams
        self._validate()
        # χ² warning, χ² drift, CUSUM warning, CUSUM drift
        self._thresholds = np.zeros(4)
        self._classes = np.empty(0)
        self._ring: np.ndarray | None = None
        self._chi: float | None = None
        self._cusum: float | None = None
        super().__init__(reference=reference, reference_size=reference_size)

    def _validate(self) -> None:
        if not _is_integer(self.window) or self.window < 2:
            raise ValueError(f"window must be an integer of at least 2, got {self.window!r}")
        if self.ert < 100:
            raise ValueError(
                f"class_mix's ert must be at least 100 samples (its warnings come every ert / 10), "
                f"got {self.ert:g}"
            )
        if not _is_number(self.shift_factor) or self.shift_factor <= 1:
            raise ValueError(
                f"shift_factor must be a number above 1 (the change of a class's odds the CUSUMs are "
                f"tuned to, 3 by default), got {self.shift_factor!r}"
            )
        if not _is_number(self.smoothing) or self.smoothing <= 0:
            raise ValueError(
                f"smoothing must be a positive number (a pseudo-count per class, 0.5 by default), "
                f"got {self.smoothing!r}"
            )
        if not _is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        needed = math.ceil(MIN_STREAMS_ABOVE / self._exceeding_share())
        streams = self.calibration_streams
        if streams is not None and (not _is_integer(streams) or streams < needed):
            raise ValueError(
                f"calibration_streams must be an integer of at least {needed} for an ert of {self.ert:g} "
                f"(so that {MIN_STREAMS_ABOVE} simulated streams exceed the drift thresholds), or unset; "
                f"got {streams!r}"
            )

    def _lengths(self) -> tuple[int, int]:
        """Evaluations per simulated stream for the warning and the drift thresholds."""
        return (
            stream_length_for(self.ert / 10, at_most=_STREAM_EVALUATIONS),
            stream_length_for(self.ert, at_most=_STREAM_EVALUATIONS),
        )

    def _exceeding_share(self) -> float:
        """Share of simulated streams in which a drift is to be raised at the ert."""
        return 1.0 - no_alarm_probability(self._lengths()[1], self.ert)

    # -- inputs ------------------------------------------------------------------------------

    def update(self, values: ArrayLike) -> list[DriftEvent]:
        """Consume a batch of class indices (see :meth:`DriftDetector.update`)."""
        batch = self._as_samples(values)
        bad = np.isfinite(batch) & ((batch < 0) | (batch != np.floor(batch)))
        if bad.any():
            index = int(np.argmax(bad))
            raise SampleError(
                f"class_mix watches class indices (whole numbers ≥ 0, such as the predicted_class "
                f"signal); got {float(batch[index])!r}",
                index,
            )
        return super().update(batch)

    def _bins(self, classes: np.ndarray) -> np.ndarray:
        """Bin of each class: its place among the reference's classes, or the last bin."""
        places = np.searchsorted(self._classes, classes)
        inside = np.minimum(places, len(self._classes) - 1)
        return np.where(self._classes[inside] == classes, places, len(self._classes)).astype(np.int64)

    # -- reference and calibration -----------------------------------------------------------

    def _fit_reference(self, reference: np.ndarray) -> None:
        bad = (reference < 0) | (reference != np.floor(reference))
        if bad.any():
            raise ValueError(
                f"the class_mix reference must hold class indices (whole numbers ≥ 0); it holds "
                f"{float(reference[np.argmax(bad)])!r}: give it the predicted_class signal"
            )
        self._classes, counts = np.unique(reference, return_counts=True)
        if len(reference) < _FEW_PER_CLASS * len(self._classes):
            log.warning(
                "the class_mix reference holds %d predictions of %d classes (fewer than %d each): the "
                "test sees little beyond classes appearing or vanishing; give a longer reference",
                len(reference), len(self._classes), _FEW_PER_CLASS,
            )  # fmt: skip
        bin_counts = np.append(counts, 0)
        expected = smoothed_proportions(bin_counts, self.smoothing)
        self._inverse_expected = 1.0 / (self.window * expected)
        self._hits, self._misses = cusum_steps(expected, self.shift_factor)
        self._calibrate(bin_counts)
        self._ring = np.zeros(self.window, dtype=np.int64)
        self._ring_classes = np.zeros(self.window)
        self._counts = np.zeros(len(bin_counts), dtype=np.int64)
        self._meta = np.zeros(2, dtype=np.int64)
        self._cusums = np.zeros(2 * len(bin_counts))
        self._chi = self._cusum = None
        self.level = "ok"

    def _calibrate(self, bin_counts: np.ndarray) -> None:
        lengths = self._lengths()
        streams = self.calibration_streams or max(
            _FEWEST_STREAMS, math.ceil(4 * MIN_STREAMS_ABOVE / self._exceeding_share())
        )
        # The statistics depend on the reference through its class counts alone.
        summary = np.concatenate([self._classes, bin_counts.astype(np.float64)]).tobytes()
        settings = [self.window, self.smoothing, self.shift_factor, self.seed, streams, *lengths]

        def simulate() -> np.ndarray:
            rng = np.random.default_rng([self.seed, zlib.crc32(summary)])
            return simulate_maxima(bin_counts, self.window, self.smoothing, self.shift_factor, lengths, streams, rng)

        inputs = (f"v{CALIBRATION_VERSION}", json.dumps(settings), summary)
        maxima = active_cache().array("class_mix-calibration", inputs, simulate, shape=(streams, 4))
        warning_length, drift_length = lengths
        self._thresholds = np.array([
            *joint_thresholds(maxima[:, 0], maxima[:, 1], warning_length, self.ert / 10),
            *joint_thresholds(maxima[:, 2], maxima[:, 3], drift_length, self.ert),
        ])[[0, 2, 1, 3]]  # fmt: skip

    # -- monitoring --------------------------------------------------------------------------

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        chi, cusum, codes, rises = self._slide(values)
        if len(values) and not math.isnan(chi[-1]):
            self._chi, self._cusum = float(chi[-1]), float(cusum[-1])
        if rises == 0:  # the common case, kept cheap for small batches
            if len(codes):
                self.level = LEVELS[int(codes[-1])]
            return []
        chi_warning, chi_drift, cusum_warning, cusum_drift = self._thresholds
        # Each event names the statistic that crossed: the one further beyond that level's threshold.
        by_cusum = np.where(
            codes == 2,
            _beyond(cusum, cusum_drift) > _beyond(chi, chi_drift),
            _beyond(cusum, cusum_warning) > _beyond(chi, chi_warning),
        )
        statistics = np.where(by_cusum, cusum, chi)
        warning = np.where(by_cusum, cusum_warning, chi_warning)
        drift = np.where(by_cusum, cusum_drift, chi_drift)
        return self._events_from_codes(codes, statistics, {1: warning, 2: drift})

    def _slide(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        from . import class_mix_kernels as kernels

        assert self._ring is not None
        start = int(self._meta[kernels.HEAD] + self._meta[kernels.COUNT])
        slots = (start + np.arange(len(values))) % self.window
        self._ring_classes[slots[-self.window :]] = values[-self.window :]
        chi, cusum = np.empty(len(values)), np.empty(len(values))
        codes = np.empty(len(values), dtype=np.int8)
        rises = kernels.slide(
            self._bins(values), self._ring, self._counts, self._meta, self._cusums, self._inverse_expected,
            self._hits, self._misses, self.window, self._thresholds, LEVEL_CODES[self.level], chi, cusum, codes,
        )  # fmt: skip
        return chi, cusum, codes, rises

    def _reading(self) -> Reading:
        chi_warning, chi_drift, cusum_warning, cusum_drift = (float(value) for value in self._thresholds)
        if self._chi is None or self._cusum is None:
            return Reading(math.nan, chi_drift, None, chi_warning)
        if _beyond(self._cusum, cusum_drift) > _beyond(self._chi, chi_drift):
            return Reading(self._cusum, cusum_drift, None, cusum_warning)
        return Reading(self._chi, chi_drift, None, chi_warning)

    @property
    def statistics(self) -> dict[str, float]:
        """Both statistics now: ``chi_square`` and ``cusum`` (the largest class CUSUM); NaN
        until the window is full."""
        if self._chi is None or self._cusum is None:
            return {"chi_square": math.nan, "cusum": math.nan}
        return {"chi_square": self._chi, "cusum": self._cusum}

    @property
    def thresholds(self) -> dict[str, float]:
        """Both statistics' thresholds: ``chi_square_warning``, ``chi_square_drift``,
        ``cusum_warning``, ``cusum_drift``."""
        names = ("chi_square_warning", "chi_square_drift", "cusum_warning", "cusum_drift")
        return dict(zip(names, (float(value) for value in self._thresholds)))

    def _samples_to_test(self) -> int:
        return self.window - (0 if self._ring is None else int(self._meta[1]))

    # -- snapshots ---------------------------------------------------------------------------

    def window_values(self) -> np.ndarray:
        """The classes in the window, oldest first (a copy)."""
        if self._ring is None:
            return np.empty(0)
        head, count = (int(value) for value in self._meta)
        return self._ring_classes[(head + np.arange(count)) % self.window]

    def _snapshot_state(self) -> dict[str, Any]:
        cusums = [] if self._ring is None else self._cusums.tolist()
        return {"window": self.window_values().tolist(), "cusums": cusums}

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        from . import class_mix_kernels as kernels

        values = np.asarray(state["window"], dtype=np.float64)
        cusums = np.asarray(state.get("cusums", []), dtype=np.float64)
        bins = 0 if self.reference is None else len(self._counts)
        if values.ndim != 1 or len(values) > (0 if self.reference is None else self.window):
            raise ValueError(
                f"snapshot holds {values.size} window values; this detector holds at most "
                f"{0 if self.reference is None else self.window} (window {self.window}"
                f"{', no reference yet' if self.reference is None else ''}): it is inconsistent"
            )
        if len(values) and not (np.isfinite(values).all() and (values >= 0).all()
                                and (values == np.floor(values)).all()):  # fmt: skip
            raise ValueError("snapshot's window holds values that are not class indices; it is inconsistent")
        if cusums.shape != (2 * bins,) or not (np.isfinite(cusums).all() and (cusums >= 0).all()):
            raise ValueError(
                f"snapshot holds {cusums.size} CUSUM values; this detector needs {2 * bins} finite values "
                f"≥ 0 (two per class bin): it is inconsistent"
            )
        if self.reference is None:
            self._ring = None
            return
        self._ring_classes[: len(values)] = values
        self._ring[:] = 0
        self._ring[: len(values)] = self._bins(values)
        self._counts[:] = np.bincount(self._ring[: len(values)], minlength=bins)
        self._meta[:] = (0, len(values))
        self._cusums[:] = cusums
        full = len(values) == self.window
        self._chi = kernels.chi_square(self._counts, self._inverse_expected, self.window) if full else None
        self._cusum = float(cusums.max()) if full else None
