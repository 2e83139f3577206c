"""Incremental Kolmogorov-Smirnov drift detector (fixed reference, sliding window)."""

from __future__ import annotations

import functools
import json
import math
from typing import Any, ClassVar, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from monitord.reference_cache import active_cache
from numpy.typing import ArrayLike

from . import ert as ert_arithmetic
from .base import LEVEL_CODES, LEVELS, DriftDetector, Reading

#: Clean streams simulated per ERT calibration and their length (after a window each to
#: fill it): 250 streams of 20,000 samples take about 1 s here through the compiled treap
#: (3-6 s with the machine's two cores shared with five test runs), and place thresholds for
#: ERTs up to 500,000 samples (10 alarms in all; 50 at the default ERT of 100,000).
CALIBRATION_STREAMS = 250
CALIBRATION_LENGTH = 20_000
#: Part of the cache key: a change of the simulation must not reuse old thresholds.
CALIBRATION_VERSION = 4

# The compiled treap (numba) and scipy are imported where first used, not here: building
# a detector without a reference, as the daemon's start-up check does, stays cheap.


class IncrementalKS(DriftDetector):
    """Incremental Kolmogorov-Smirnov test of a sliding window against a fixed reference.

    The two-sample Kolmogorov-Smirnov statistic ``D`` (the largest gap between the
    empirical distribution functions of the reference and of the window) catches any
    change of a signal's distribution, not only of its mean, and needs no assumption
    about its shape. Recomputing it costs O((n + m) log(n + m)) per sample; dos Reis et
    al. keep both samples in one randomised treap so that a sample entering or leaving
    costs O(log(n + m)) and ``D`` is read at the root in O(1).

    How this implementation keeps the treap, and why it departs from the paper:

    * The reference is fixed, so the treap holds the reference's distinct values only,
      built once (random priorities, heap-ordered). The window lives in a ring buffer
      and, in the treap, as counts: per reference value, the window values equal to it
      and those strictly between it and the previous reference value (a sentinel above
      every value takes the rest). Between two reference values ``F_ref`` is flat and
      ``F_win`` only rises, so the extremes of ``F_ref - F_win`` lie at those boundaries
      and the counts lose nothing. Each node keeps the sum and the largest and smallest
      prefix sum of its subtree's steps of ``n * m * (F_ref - F_win)``; the root gives
      ``D`` in O(1), exact in integers until one final division and equal to
      ``scipy.stats.ks_2samp(reference, window).statistic`` at every step, ties
      included. A value entering or leaving the window changes one node and its path to
      the root: O(log n) expected and independent of the window size, where the paper's
      tree over both samples costs O(log(n + m)) and rotates on every change.
    * The paper breaks ties at random because its nodes are observations, whose keys
      must differ. That only serves to store equal values; but the order it picks
      within a run of equal values can put the gap between the distribution functions
      *beyond* its value at either end of the run, so on discrete or rounded signals
      its ``D`` exceeds the textbook statistic and alarms too often. Counting copies
      evaluates the distribution functions after all copies of a value
      (right-continuous, as the test's critical values assume), keeps the O(log n)
      updates and O(1) reads the paper is after, and leaves nothing to chance: the
      random priorities shape the tree, never the statistic.
    * Aggregates are re-derived along the changed path instead of being pushed down
      lazily; both cost O(log n) per change and give O(1) reads.

    The reference is fixed (the model's saved reference signals, or the first
    ``reference_size`` values of the stream) and the window holds the last ``window``
    values; the two sizes are independent. A decision is taken only once the window is
    full: on a partial window the test would compare against a threshold that moves
    with every sample, and a handful of values says little about a distribution. Until
    then the detector is not ready: the level stays ``ok`` and the state reports no
    statistic.

    Drift is declared when ``D > c(alpha) * sqrt((n + m) / (n * m))`` with
    ``c(alpha) = sqrt(-ln(alpha / 2) / 2)``, the first term of the asymptotic
    Kolmogorov distribution (some ports drop the ``/2`` and test at twice the
    stated ``alpha``). A warning uses the same rule with ``alpha_warning``. The test is
    repeated at every sample on overlapping windows against one reference, so ``alpha``
    is a per-test level, not a false-alarm rate over a stream: with a window and a
    reference of 500, ``alpha = 0.001`` raises a false drift somewhere in 100,000 clean
    values in about one stream in four, ``1e-5`` in none of 60, at the price of a later
    alarm (``benchmarks/iks_speed.py`` prints the trade-off). The p-value reported in the
    state is the asymptotic one, ``scipy.special.kolmogorov(D * sqrt(n * m / (n + m)))``,
    computed when the state is read rather than per sample. After drift the reference
    stays: the level stays at ``drift`` while the window differs from the reference and
    falls back once ``D`` is no more than the *warning* threshold. That hysteresis makes
    one change one drift event, where a statistic hovering at the drift threshold would
    otherwise fire again at every crossing.

    The statistic never exceeds 1, so settings whose drift threshold is 1 or more (a
    window or a reference so small, or an ``alpha`` so low, that no data could ever
    alarm) are refused with the smallest window, reference and ``alpha`` that can; the
    warning threshold is never above the drift threshold, so such settings can warn too.

    A batch runs in one compiled loop (numba, cached on disk; the very first call in a
    fresh environment compiles for a few seconds): millions of values per second at any
    window size, where river's ``KolmogorovSmirnov`` manages about 11,000.

    Parameters
    ----------
    window
        Number of most recent values compared with the reference (``m``).
    ert
        Expected run time between false alarms, in samples of data from the reference's
        population: when given, the drift threshold on ``D`` is calibrated to it (the
        warning threshold to ``ert / 10``) instead of derived from ``alpha``. The windowed
        statistic is distribution-free for continuous signals (it depends on ranks only),
        so the simulation draws a fresh reference of the reference's size and a clean
        stream from one continuous distribution for each of its streams: the thresholds
        allow for the reference's own sampling error and depend on the two sizes and
        ``ert`` alone (cached per process and by the daemon). On a signal with many tied
        values ``D`` runs lower, so false alarms come rarer than ``ert`` says. Costs 1-6 s
        (on 2 shared cores) the first time a pair of sizes is seen. Give either ``ert``
        or ``alpha``.
    alpha
        Significance level of the drift test; ``None`` (the default) is 0.001 without
        ``ert``.
    alpha_warning
        Significance level of the warning test, at least ``alpha``; ``None`` means
        ``10 * alpha``. Set it equal to ``alpha`` to turn the warning level off. Not
        used with ``ert``.
    reference_size
        Values taken from the start of the stream as the reference (``n``) when the
        model provides none; a longer given reference is cut to this size.
    seed
        Seed of the treap's random priorities (``None``: fresh entropy). It shapes the
        tree only; every statistic, level and event is the same for any seed.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.iks import IncrementalKS
    >>> rng = np.random.default_rng(0)
    >>> detector = IncrementalKS(window=300, alpha=0.001)
    >>> detector.update(rng.normal(0.0, 1.0, 1500))  # the first 500 become the reference
    []
    >>> events = detector.update(rng.normal(0.0, 2.0, 1000))  # the spread doubles
    >>> [(event.index, event.level) for event in events[:2]]
    [(146, 'warning'), (183, 'drift')]
    >>> state = detector.state
    >>> state.level, state.statistic > state.threshold, state.p_value < 0.001
    ('drift', True, True)

    References
    ----------
    dos Reis, D. M., Flach, P., Matwin, S., Batista, G. (2016). Fast Unsupervised Online
    Drift Detection Using Incremental Kolmogorov-Smirnov Test. In Proceedings of the 22nd
    ACM SIGKDD International Conference on Knowledge Discovery and Data Mining,
    pp. 1545-1554. https://doi.org/10.1145/2939672.2939836
    """

    type_name: ClassVar[str] = "iks"

    def __init__(
        self,
        *,
        window: int = 500,
        ert: float | None = None,
        alpha: float | None = None,
        alpha_warning: float | None = None,
        reference_size: int = 500,
        seed: int | None = None,
        reference: ArrayLike | None = None,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        self.ert = ert_arithmetic.ert_instead_of(ert, alpha=alpha, alpha_warning=alpha_warning)
        if self.ert is not None:
            ert_arithmetic.refuse_out_of_reach("iks", self.ert, CALIBRATION_STREAMS, CALIBRATION_LENGTH)
        if alpha is None:
            alpha = 0.001
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
        effective_warning = 10.0 * float(alpha) if alpha_warning is None else float(alpha_warning)
        if not float(alpha) <= effective_warning < 1.0:
            hint = " (the default is 10 * alpha; set alpha_warning explicitly)" if alpha_warning is None else ""
            raise ValueError(
                f"alpha_warning must lie in [alpha, 1) = [{alpha}, 1), got {effective_warning!r}{hint}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.window = window
        self.alpha = None if self.ert is not None else alpha
        self.alpha_warning = alpha_warning
        self.reference_size = reference_size
        self.seed = seed
        self._rng = np.random.default_rng(seed)  # the treap's priorities
        self._c_drift = _c(float(alpha))
        self._c_warning = _c(effective_warning)
        self._arrays: dict[str, np.ndarray] | None = None
        self._slide_arrays: tuple[np.ndarray, ...] = ()  # the kernel's view of _arrays
        self._reference_count = 0
        super().__init__(reference=reference, reference_size=reference_size)
        if self.reference is None:
            self._set_thresholds(reference_size)

    # -- DriftDetector ----------------------------------------------------------------------

    def _fit_reference(self, reference: np.ndarray) -> None:
        from . import _treap

        self._set_thresholds(len(reference), given=True)
        self._reference_count = len(reference)
        arrays = _treap_of(reference, self.window, self._rng)
        self._arrays = arrays
        self._slide_arrays = tuple(arrays[name] for name in ("table", "depth", "keys", "meta", "ring", "slots"))

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        statistics, codes, rises = self._slide(values)
        if rises == 0:  # the common case, kept cheap for small micro-batches
            self.level = LEVELS[int(codes[-1])]
            return []
        thresholds = {1: self._warning_threshold, 2: self._drift_threshold}
        return self._events_from_codes(codes, statistics, thresholds)

    def _reading(self) -> Reading:
        if self._window_count() < self.window:  # not ready: no statistic yet
            return Reading(math.nan, self._drift_threshold, None, self._warning_threshold)
        from scipy.special import kolmogorov

        statistic = self._statistic()
        n, m = self._reference_count, self.window
        p_value = float(kolmogorov(statistic * math.sqrt(n * m / (n + m))))
        return Reading(statistic, self._drift_threshold, p_value, self._warning_threshold)

    def _samples_to_test(self) -> int:
        return self.window - self._window_count()

    def _snapshot_state(self) -> dict[str, Any]:
        return {"window": self.window_values().tolist()}

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        values = np.asarray(state["window"], dtype=np.float64)
        if self.reference is None:
            self._arrays = None
            self._reference_count = 0
            self._set_thresholds(self.reference_size)
            if len(values):
                raise ValueError("snapshot holds window values but no reference; it is inconsistent")
            return
        if len(values) > self.window:
            raise ValueError(f"snapshot holds {len(values)} window values; this detector's window is {self.window}")
        self._slide(values)

    # -- helpers ----------------------------------------------------------------------------

    def window_values(self) -> np.ndarray:
        """The window, oldest value first (a copy)."""
        if self._arrays is None:
            return np.empty(0)
        from . import _treap

        ring, meta = self._arrays["ring"], self._arrays["meta"]
        count, head = int(meta[_treap.COUNT]), int(meta[_treap.HEAD])
        keys = ring[:count] if count < self.window else np.concatenate((ring[head:], ring[:head]))
        return _treap.from_keys(keys)

    def _slide(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        from . import _treap

        statistics = np.empty(len(values), dtype=np.float64)
        codes = np.empty(len(values), dtype=np.int8)
        rises = _treap.slide(
            *self._slide_arrays, self._reference_count, np.ascontiguousarray(values, dtype=np.float64),
            self._warning_threshold, self._drift_threshold, LEVEL_CODES[self.level], statistics, codes,
        )  # fmt: skip
        return statistics, codes, rises

    def _window_count(self) -> int:
        if self._arrays is None:
            return 0
        from . import _treap

        return int(self._arrays["meta"][_treap.COUNT])

    def _statistic(self) -> float:
        """D of the full window, read at the treap's root."""
        from . import _treap

        assert self._arrays is not None
        table, meta = self._arrays["table"], self._arrays["meta"]
        root = meta[_treap.ROOT]
        gap = max(int(table[root, _treap.MAXP]), -int(table[root, _treap.MINP]))
        return gap / (self._reference_count * self.window)

    def _set_thresholds(self, n: int, *, given: bool = False) -> None:
        """The thresholds for a reference of ``n`` values (before it is known: a full one),
        refusing ``n`` where the drift threshold is out of the statistic's reach."""
        if self.ert is not None:
            self._drift_threshold = self._warning_threshold = math.nan
            if given:
                self._calibrate(n)
            return
        self._drift_threshold = self._c_drift * _scale(n, self.window)
        self._warning_threshold = self._c_warning * _scale(n, self.window)
        if self._drift_threshold >= 1.0:
            raise ValueError(self._never_alarms(n, given))

    def _calibrate(self, n: int) -> None:
        """Thresholds on ``D`` for ``ert`` (and ``ert / 10``) with a reference of ``n`` values."""
        assert self.ert is not None
        self._drift_threshold, self._warning_threshold = (float(t) for t in _thresholds(n, self.window, self.ert))

    def _never_alarms(self, n: int, given: bool) -> str:
        c, m = self._c_drift, self.window
        reference = f"a reference of {n} values" if given else f"reference_size = {n}"
        remedies = []
        if n > c * c:
            remedies.append(f"a window of at least {_smallest_size(c, n)}")
        if m > c * c:
            remedies.append(f"{'a reference of at least' if given else 'a reference_size of at least'} "
                            f"{_smallest_size(c, m)}{' values' if given else ''}")
        remedies.append(f"alpha above {2.0 * math.exp(-2.0 * n * m / (n + m)):.3g}")
        return (
            f"iks can never alarm with window = {m}, {reference} and alpha = {self.alpha}: its drift "
            f"threshold would be {self._drift_threshold:.3g} and the KS statistic never exceeds 1; "
            f"use {', or '.join(remedies)}"
        )


def _treap_of(reference: np.ndarray, window: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The treap over ``reference``'s distinct values, with an empty window of ``window``."""
    from . import _treap

    keys, counts = np.unique(_treap.to_keys(reference), return_counts=True)
    arrays = _treap.allocate(len(keys), window)
    arrays["keys"][:-1] = keys
    arrays["keys"][-1] = _treap.SENTINEL
    priorities = rng.random(len(keys) + 1)
    _treap.build(
        arrays["table"], arrays["depth"], arrays["meta"], arrays["ring"], priorities,
        np.append(counts, 0).astype(np.int64),
    )  # fmt: skip
    return arrays


@functools.lru_cache(maxsize=64)
def _thresholds(n: int, window: int, ert: float) -> np.ndarray:
    """The drift and warning thresholds on ``D`` for a reference of ``n`` values, ``window``
    and ``ert``: kept for the process and in the daemon's cache.

    The simulated streams each draw a fresh reference and stream from one continuous
    distribution (``D`` depends on ranks only), so the alarms counted over all of them
    are pooled over references as a user's are over the references they might have had.
    The warning threshold is the lowest with at most one rise per ``ert / 10`` samples;
    the drift threshold the lowest with at most one drift per ``ert`` samples, a drift
    lasting until ``D`` falls to the warning threshold, as in the detector.
    """

    def simulate() -> np.ndarray:
        from . import _treap, iks_kernels

        rng = np.random.default_rng([CALIBRATION_VERSION, n, window])
        gaps = np.empty((CALIBRATION_STREAMS, CALIBRATION_LENGTH), dtype=np.int64)
        statistics = np.empty(window + CALIBRATION_LENGTH - 1)
        codes = np.empty(len(statistics), dtype=np.int8)
        for stream in range(CALIBRATION_STREAMS):
            arrays = _treap_of(rng.random(n), window, rng)  # a fresh reference each time
            _treap.slide(
                *(arrays[name] for name in ("table", "depth", "keys", "meta", "ring", "slots")), n,
                rng.random(len(statistics)), 2.0, 2.0, 0, statistics, codes,
            )  # fmt: skip
            gaps[stream] = np.rint(statistics[window - 1 :] * (n * window))
        samples = gaps.size
        warning = iks_kernels.lowest_threshold(gaps, samples / max(10.0, ert / 10.0))
        drift = iks_kernels.lowest_threshold(gaps, samples / ert, warning)
        return np.array([drift, min(warning, drift)], dtype=np.float64) / (n * window)

    settings = [n, window, ert, CALIBRATION_LENGTH, CALIBRATION_STREAMS]
    thresholds = active_cache().array(
        "iks-calibration", (f"v{CALIBRATION_VERSION}", json.dumps(settings)), simulate, shape=(2,)
    )
    thresholds.setflags(write=False)
    return thresholds


def _scale(n: int, m: int) -> float:
    """How the KS critical value scales with the sizes of the two samples."""
    return math.sqrt((n + m) / (n * m))


def _smallest_size(c: float, other: int) -> int:
    """The smallest size of one sample for which ``c * _scale(size, other) < 1``
    (``other`` must exceed ``c**2``)."""
    size = max(1, math.floor(c * c * other / (other - c * c)))
    while c * _scale(size, other) >= 1.0:
        size += 1
    while size > 1 and c * _scale(size - 1, other) < 1.0:
        size -= 1
    return size


def _c(alpha: float) -> float:
    return math.sqrt(-0.5 * math.log(alpha / 2.0))
