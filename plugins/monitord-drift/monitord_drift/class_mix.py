"""Class mix: a χ² test of the predicted classes in a sliding window against the reference's."""

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

# The compiled loop (numba) is imported where first used, not here: building a detector
# without a reference, as the daemon's start-up check does, stays cheap.

log = logging.getLogger("monitord.drift.class_mix")

#: Bumped whenever the calibration's simulation changes, so cached draws are not reused.
CALIBRATION_VERSION = 1
#: Counts simulated per block (draws × bins): bounds the calibration's memory (~100 MB).
_BLOCK_COUNTS = 4_000_000
#: Fewer reference samples per class than this and the reference says little about the mix.
_FEW_PER_CLASS = 5


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def bootstrap_statistics(
    reference_counts: np.ndarray, window: int, smoothing: float, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``draws`` values of the statistic on clean windows, the reference's error included.

    The reference's empirical class proportions p̂ stand for the true ones (the bootstrap
    principle). Each draw resamples a reference of the same size, n counts from
    Multinomial(n, p̂), smooths it into expected proportions as the detector does, and
    scores a window of Multinomial(w, p̂) counts against them: the spread between the two
    samples is the one a monitored window shows against the one saved reference.
    ``reference_counts`` holds one count per bin, the last bin (classes the reference never
    shows) at 0.
    """
    n = int(reference_counts.sum())
    proportions = reference_counts / n
    out = np.empty(draws)
    block = max(1, _BLOCK_COUNTS // len(reference_counts))
    for start in range(0, draws, block):
        size = min(block, draws - start)
        references = rng.multinomial(n, proportions, size=size)
        windows = rng.multinomial(window, proportions, size=size).astype(np.float64)
        inverse_expected = 1.0 / (window * smoothed_proportions(references, smoothing))
        out[start : start + size] = chi_square(windows, inverse_expected, window)
    return out


def chi_square(counts: np.ndarray, inverse_expected: np.ndarray, window: int) -> np.ndarray:
    """Σ c² / e - w per row, in the compiled loop's order of operations: a clean window
    that equals a calibration draw scores exactly its value, never one rounding above
    (a reference of one class would otherwise alarm on that class alone)."""
    total = np.zeros(counts.shape[0])
    for k in range(counts.shape[1]):
        total += counts[:, k] * counts[:, k] * inverse_expected[:, k]
    return total - window


def smoothed_proportions(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """(count + smoothing) / (n + smoothing · bins) per bin, along the last axis."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + smoothing) / (counts.sum(axis=-1, keepdims=True) + smoothing * counts.shape[-1])


class ClassMix(DriftDetector):
    """Label shift: a χ² test of the predicted-class counts in a sliding window.

    Watches ``predicted_class`` (class indices as floats) and asks whether the mix of
    classes in the last ``window`` predictions is the reference's: a model shown digits
    drawn from a few classes only, each image clean, changes no confidence, entropy or
    activation, but changes this. It is the black-box label-shift test of Lipton et al.
    and Rabanser et al. on the model's hard predictions (under label shift the
    predicted-class distribution moves with the true one whenever the confusion matrix
    is invertible).

    **Statistic.** With c_k the window's count of class k and p̃_k the reference's
    smoothed proportion, Pearson's

        X² = Σ_k (c_k - w·p̃_k)² / (w·p̃_k),    p̃_k = (n_k + s) / (n + s·K).

    The bins are the classes the reference shows plus one for every class it does not;
    the pseudo-count s (``smoothing``, 0.5 by default: Jeffreys') keeps that bin's
    expectation above 0, so a never-seen class in the window counts as heavy evidence
    instead of dividing by zero. The window's counts change by two per sample and X² is
    summed from them in O(K), so one update costs O(K) whatever the window.

    **Calibration.** X² is not χ²_{K-1} here: the reference is itself a sample (360
    images), so a clean window differs from p̃ by the sampling error of both, and X² runs
    about (1 + w/n) times larger; a threshold fitted on the reference's own images is
    optimistic (three times the false alarms were measured). The thresholds come from a
    parametric bootstrap of the reference's class counts: B times, a reference of n
    counts and a window of w counts are drawn from the reference's proportions, and the
    window is scored against the resampled reference (see :func:`bootstrap_statistics`).
    The thresholds are the order statistics k = ⌈(1 - α)(B + 1)⌉ of the B values for
    ``alpha_warning`` and ``alpha_drift``, the p-value (1 + #{X²_b ≥ X²}) / (B + 1). The
    draws are seeded by ``seed`` and a CRC-32 of the class counts (not the rows' order:
    the daemon's reference is stored shuffled), and kept in the daemon's reference cache.
    B = 10 / ``alpha_drift`` by default: 100,000 draws for the default 1e-4, 0.25 s here
    for 10 classes; the cost grows with the classes (B·K binomial draws: 40 s for 1,000),
    once per reference thanks to the cache.

    **Rates.** ``alpha_drift`` is the chance, in the bootstrap, that one clean full window
    exceeds the drift threshold; the window slides one sample at a time, so evaluations
    overlap and an exceedance lasts several samples. Measured, the bootstrap is
    conservative in the far tail: with a reference of 360 predictions of 10 roughly
    balanced classes and clean streams drawn afresh from the distribution the reference
    came from (20 streams of 250,000), windows exceeded the drift threshold at a rate of
    1.8e-6 for the default α = 1e-4 (3.8e-4 for α = 1e-3), in 7 episodes in 5 million
    samples: an expected run length of about 700,000 samples between false drifts
    (26,000 for α = 1e-3). Thresholds fitted with the reference taken as the truth (no
    resampling of it) raised 181 false drifts in 400,000 samples at α = 1e-4, and 164 in
    1 million at α = 1e-5. The warning (α = 1e-3: one episode per 26,000 clean
    samples) is for dashboards, not alerts. Delays with the defaults, p90 over 20 streams: only half the classes 115
    samples, one class at 30 % 237; three classes doubled is missed in 4 of 20 streams
    within 5,000 samples (median 882): against a reference of 360 the reference's own
    error is about as large as that shift.

    **Levels.** ``warning`` while X² exceeds the warning threshold, ``drift`` from when it
    exceeds the drift threshold until it falls back to the warning threshold, so a
    statistic hovering about the drift threshold makes one drift event. The reference
    stays: the level falls back once the window's mix is the reference's again. Until
    the window is full the detector is not ready (no statistic, level ``ok``).

    **Inputs.** Values must be class indices: whole numbers ≥ 0 (NaN and ±inf are
    skipped, as by every detector); anything else is refused with its position. A
    reference with fewer than 5 samples per class it shows is accepted with a logged
    warning: its proportions are too rough for the test to see much beyond classes
    appearing or vanishing.

    Parameters
    ----------
    window
        Predictions in the sliding window (w); X² is evaluated at every sample once full.
    alpha_warning
        Chance that a clean full window exceeds the warning threshold.
    alpha_drift
        Chance that a clean full window exceeds the drift threshold; below
        ``alpha_warning``.
    smoothing
        Pseudo-count s added to every bin's reference count, > 0.
    reference_size
        Predictions taken from the start of the stream as the reference when the model
        gives none; a longer given reference is cut to this size.
    seed
        Seeds the calibration draws (with the reference's class counts).
    calibration_windows
        B, the bootstrap windows drawn; ``None``: ``max(10,000, ⌈10 / alpha_drift⌉)``.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.class_mix import ClassMix
    >>> rng = np.random.default_rng(0)
    >>> detector = ClassMix(reference=rng.integers(0, 10, 360).astype(float))
    >>> detector.update(rng.integers(0, 10, 2000).astype(float))  # the same ten classes
    []
    >>> half = rng.integers(0, 5, 300).astype(float)  # digits 0-4 only
    >>> [(event.index, event.level) for event in detector.update(half)]
    [(84, 'warning'), (99, 'drift')]
    >>> state = detector.state
    >>> state.level, state.statistic > state.threshold, state.p_value < 1e-4
    ('drift', True, True)

    References
    ----------
    K. Pearson, "On the criterion that a given system of deviations from the probable...",
    Philosophical Magazine 50(302), 1900 (the χ² goodness-of-fit statistic).
    B. Efron, "Bootstrap methods: another look at the jackknife", Annals of Statistics
    7(1), 1979.
    Z. Lipton, Y.-X. Wang, A. Smola, "Detecting and correcting for label shift with black
    box predictors", ICML 2018.
    S. Rabanser, S. Günnemann, Z. Lipton, "Failing loudly: an empirical study of methods
    for detecting dataset shift", NeurIPS 2019 (χ² on predicted classes among them).
    B. Phipson, G. K. Smyth, "Permutation p-values should never be zero", Stat. Appl.
    Genet. Mol. Biol. 9(1), 2010 (the (1 + #)/(B + 1) Monte-Carlo p-value).
    """

    type_name: ClassVar[str] = "class_mix"

    def __init__(
        self,
        *,
        window: int = 200,
        alpha_warning: float = 1e-3,
        alpha_drift: float = 1e-4,
        smoothing: float = 0.5,
        reference_size: int = 500,
        seed: int = 0,
        calibration_windows: int | None = None,
        reference: ArrayLike | None = None,
    ) -> None:
        self.window = window
        self.alpha_warning = alpha_warning
        self.alpha_drift = alpha_drift
        self.smoothing = smoothing
        self.reference_size = reference_size
        self.seed = seed
        self.calibration_windows = calibration_windows
        self._validate()
        self._thresholds: tuple[float, float] = (0.0, 0.0)
        self._calibration = np.empty(0)
        self._classes = np.empty(0)
        self._ring: np.ndarray | None = None
        self._statistic: float | None = None
        super().__init__(reference=reference, reference_size=reference_size)

    def _validate(self) -> None:
        if not _is_integer(self.window) or self.window < 2:
            raise ValueError(f"window must be an integer of at least 2, got {self.window!r}")
        for name in ("alpha_warning", "alpha_drift"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
        if not self.alpha_drift < self.alpha_warning:
            raise ValueError(
                f"alpha_drift ({self.alpha_drift}) must be smaller than alpha_warning ({self.alpha_warning}): "
                "drift is the rarer, stronger alarm"
            )
        if not _is_number(self.smoothing) or self.smoothing <= 0:
            raise ValueError(
                f"smoothing must be a positive number (a pseudo-count per class, 0.5 by default), "
                f"got {self.smoothing!r}"
            )
        if not _is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        windows = self.calibration_windows
        if windows is not None and (not _is_integer(windows) or windows * self.alpha_drift < 1):
            raise ValueError(
                f"calibration_windows must be an integer of at least 1 / alpha_drift = "
                f"{math.ceil(1 / self.alpha_drift)} (or unset), got {windows!r}"
            )

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
        self._inverse_expected = 1.0 / (self.window * smoothed_proportions(bin_counts, self.smoothing))
        self._calibrate(bin_counts)
        self._ring = np.zeros(self.window, dtype=np.int64)
        self._ring_classes = np.zeros(self.window)
        self._counts = np.zeros(len(bin_counts), dtype=np.int64)
        self._meta = np.zeros(2, dtype=np.int64)
        self._statistic = None
        self.level = "ok"

    def _calibrate(self, bin_counts: np.ndarray) -> None:
        draws = self.calibration_windows or max(10_000, math.ceil(10 / self.alpha_drift))
        # The statistic depends on the reference through its class counts alone.
        summary = np.concatenate([self._classes, bin_counts.astype(np.float64)]).tobytes()

        def simulate() -> np.ndarray:
            rng = np.random.default_rng([self.seed, zlib.crc32(summary)])
            return np.sort(bootstrap_statistics(bin_counts, self.window, self.smoothing, draws, rng))

        inputs = (f"v{CALIBRATION_VERSION}", json.dumps([self.window, self.smoothing, self.seed, draws]), summary)
        calibration = active_cache().array("class_mix-calibration", inputs, simulate)
        if calibration.shape != (draws,) or calibration.dtype != np.float64:
            calibration = simulate()  # an entry of another shape is not ours to trust
        self._calibration = calibration
        self._thresholds = (self._quantile(self.alpha_warning), self._quantile(self.alpha_drift))

    def _quantile(self, alpha: float) -> float:
        size = len(self._calibration)
        rank = min(size, max(1, math.ceil((1.0 - alpha) * (size + 1) - 1e-9)))
        return float(self._calibration[rank - 1])

    # -- monitoring --------------------------------------------------------------------------

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        statistics, codes, rises = self._slide(values)
        if len(values) and not math.isnan(statistics[-1]):
            self._statistic = float(statistics[-1])
        if rises == 0:  # the common case, kept cheap for small batches
            if len(codes):
                self.level = LEVELS[int(codes[-1])]
            return []
        warning, drift = self._thresholds
        return self._events_from_codes(codes, statistics, {1: warning, 2: drift})

    def _slide(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        from . import class_mix_kernels as kernels

        assert self._ring is not None
        start = int(self._meta[kernels.HEAD] + self._meta[kernels.COUNT])
        slots = (start + np.arange(len(values))) % self.window
        self._ring_classes[slots[-self.window :]] = values[-self.window :]
        statistics = np.empty(len(values))
        codes = np.empty(len(values), dtype=np.int8)
        warning, drift = self._thresholds
        rises = kernels.slide(
            self._bins(values), self._ring, self._counts, self._meta, self._inverse_expected, self.window,
            warning, drift, LEVEL_CODES[self.level], statistics, codes,
        )  # fmt: skip
        return statistics, codes, rises

    def _p_value(self, statistic: float) -> float:
        size = len(self._calibration)
        above = size - int(np.searchsorted(self._calibration, statistic, side="left"))
        return (1 + above) / (size + 1)

    def _reading(self) -> Reading:
        warning, drift = self._thresholds
        if self._statistic is None:
            return Reading(math.nan, drift, None, warning)
        return Reading(self._statistic, drift, self._p_value(self._statistic), warning)

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
        return {"window": self.window_values().tolist()}

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        values = np.asarray(state["window"], dtype=np.float64)
        if values.ndim != 1 or len(values) > (0 if self.reference is None else self.window):
            raise ValueError(
                f"snapshot holds {values.size} window values; this detector holds at most "
                f"{0 if self.reference is None else self.window} (window {self.window}"
                f"{', no reference yet' if self.reference is None else ''}): it is inconsistent"
            )
        if len(values) and not (np.isfinite(values).all() and (values >= 0).all()
                                and (values == np.floor(values)).all()):  # fmt: skip
            raise ValueError("snapshot's window holds values that are not class indices; it is inconsistent")
        if self.reference is None:
            self._ring = None
            return
        level = self.level
        self.level = "ok"
        statistics, _, _ = self._slide(values)  # refills the counts; its levels are not the saved one
        self.level = level
        self._statistic = float(statistics[-1]) if len(values) == self.window else None
