"""Bernoulli CUSUM: Page's likelihood-ratio CUSUM on the error stream, its rate learned from it."""

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
from ._restarting import CARRY, Scan, check_errors, count, number, run_batch, samples_to_test
from .base import DriftDetector, Reading

#: Clean streams simulated per ERT calibration, and the longest of them: 1,000 streams of
#: 50,000 samples take about a second here (2 shared cores) and place thresholds for ERTs
#: up to 2.5 million samples.
CALIBRATION_STREAMS = 1_000
CALIBRATION_LENGTH = 50_000
#: The thresholds tried, in log-likelihood units (1.2 % apart; interpolated).
CALIBRATION_LEVELS = np.geomspace(0.05, 60.0, 600)
#: Part of the cache key: a change of the simulation must not reuse old thresholds.
CALIBRATION_VERSION = 4


class BernoulliCUSUM(DriftDetector):
    r"""One-sided Bernoulli CUSUM: the quickest test for a rise of the error rate.

    Between two fixed error rates, the rate $p_0$ in control and a rate $p_1$ to be
    detected, Page's CUSUM of the log-likelihood ratio is the test with the shortest
    worst-case delay for a given false-alarm rate (Moustakides 1986). For errors
    $x_t \in \{0, 1\}$ and $p_1$ given as an odds ratio $R$ over $p_0$ (Steiner et al.
    2000), the log-likelihood ratio of a sample is

    $$W_t = x_t \ln R - \ln\bigl(1 + (R - 1)\, p_0\bigr)$$

    and the statistic $S_t = \max(0,\ S_{t-1} + W_t)$, $S = 0$ at the start and after a
    restart. The level is ``drift`` where $S_t \ge$ ``threshold``, ``warning`` where
    $S_t \ge$ ``warning_threshold``.

    Why this and not the DDM family: DDM and HDDM bound the error rate with confidence
    intervals, HDDM's from Hoeffding's inequality, which assumes the worst variance (that
    of a rate of 50 %), so at a rate of 5 % they need several times the samples the
    likelihood ratio needs. Measured on 400 streams (benchmarks/RESULTS.md, "Error
    detectors"), this test with its defaults finds a rise from 5 % to 10 % within 1,000
    samples in 98.5 % of them (median delay 302) with 0.011 false alarms per 1,000 clean
    samples; ``hddm_a`` at its defaults finds it in 1 stream of 20.

    The rate $p_0$ is not known in advance: it is learned from the stream. The first
    ``min_samples`` samples after the start or a restart only estimate it (no test runs;
    the level stays what it was, ``drift`` after a restart); the test then runs with
    $p_0 = (k + \tfrac12)/(n + 1)$ from the $k$ errors among the $n$ samples since the
    restart, re-estimated every ``min_samples`` samples (from all of them), so that
    over a long clean stream the estimate, and with it the false-alarm rate, settles.
    The half error keeps $p_0 > 0$ when the first samples hold no error. A change
    found within ``min_samples`` samples is judged against the rate before it; one that
    goes unnoticed longer is partly learned as the new normal. At a drift the test
    restarts and learns the new rate, as the DDM family does; a false alarm shortly
    before a real change therefore learns part of the change as normal and can miss it
    (most of the 1.5 % of rises missed in the benchmark).

    The input is the ``error`` signal: 1 for a wrong prediction, 0 for a right one; any
    other value raises ``ValueError`` before the state changes. The statistic is
    computed from counts of samples and errors, so any split of a stream into batches
    gives bit-identical results.

    Parameters
    ----------
    odds_ratio
        $R$: the odds of an error after the change over those before, the change the
        test is quickest for (1.5: 5 % becomes about 7.3 %). Larger rises are found
        sooner still; a larger ratio finds them sooner but pays in the rate it assumes
        more for an error in the learned rate (at 2, 5 % → 10 % was missed more often).
    ert
        Expected run time between false alarms, in labelled samples at the learned rate:
        when given, the drift threshold is calibrated to it (the warning threshold to
        ``ert / 10`` unless ``warning_threshold`` is given) when the rate has been learned,
        by simulating clean streams at rates drawn from what the first ``min_samples``
        labels say of the rate (the Jeffreys posterior), so a rate learned from a few
        hundred labels is not trusted as exact; the test renews its rate in the
        simulation as it does on the stream. A fixed ``threshold`` gives very different
        false-alarm rates at different error rates (at 1-2 % a fraction of those at 5 %,
        so the test is slower there than the false alarms allowed need); ``ert`` gives
        the same at any: at 1 % → 2 %, 14 of 20 rises found within 1,000 labels with
        ``ert=10_000`` against 2 of 20 with the default threshold (benchmarks/RESULTS.md).
        Costs up to a second each time the rate is learned (at the start and after each drift), cached per error count.
        Give either ``ert`` or ``threshold``.
    threshold
        $h$, the drift threshold on $S_t$ (log-likelihood units); ``None`` (the default)
        is 6 without ``ert``. Larger: fewer false alarms (their rate falls about as
        $e^{-h}$), longer delays (they grow about linearly in $h$).
    warning_threshold
        Warning threshold on $S_t$, below the drift threshold; ``None`` (the default) is
        three quarters of ``threshold`` (at half, clean 5 % streams warn every few hundred
        samples), or with ``ert`` the threshold calibrated for ``ert / 10``.
    min_samples
        Samples after the start or a restart that estimate the error rate before the
        test runs; also how often the estimate is renewed.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.bernoulli_cusum import BernoulliCUSUM

    >>> rng = np.random.default_rng(3)
    >>> detector = BernoulliCUSUM()

    The error rate goes from 5% to 10% at sample 2000:

    >>> errors = np.concatenate([rng.random(2000) < 0.05, rng.random(2000) < 0.10])
    >>> for event in detector.update(errors.astype(float)):
    ...     print(event.index, event.level, round(event.statistic, 2), event.threshold)
    2094 warning 4.52 4.5
    2104 warning 4.67 4.5
    2111 drift 6.11 6.0

    After the drift it learns the new rate, the normal from then on:

    >>> detector.state.level, round(detector.rate, 3)
    ('ok', 0.12)

    References
    ----------
    [^1]: E. S. Page. 1954. Continuous Inspection Schemes. Biometrika 41(1/2), 100-115.
    [^2]: M. R. Reynolds, Z. G. Stoumbos. 1999. A CUSUM chart for monitoring a proportion
          when inspecting continuously. Journal of Quality Technology 31(1), 87-108.
    [^3]: S. H. Steiner, R. J. Cook, V. T. Farewell, T. Treasure. 2000. Monitoring
          surgical performance using risk-adjusted cumulative sum charts. Biostatistics
          1(4), 441-452.
    [^4]: G. V. Moustakides. 1986. Optimal stopping times for detecting changes in
          distributions. The Annals of Statistics 14(4), 1379-1387.
    """

    type_name: ClassVar[str] = "bernoulli_cusum"
    needs_reference: ClassVar[bool] = False

    def __init__(
        self,
        *,
        odds_ratio: float = 1.5,
        ert: float | None = None,
        threshold: float | None = None,
        warning_threshold: float | None = None,
        min_samples: int = 500,
        reference: ArrayLike | None = None,
    ) -> None:
        self.odds_ratio = number("odds_ratio", odds_ratio, low=1.0, low_open=True)
        self.ert = ert_arithmetic.ert_instead_of(ert, threshold=threshold)
        if self.ert is not None:
            # Twice the streams asked: the restarting statistic's alarms cluster.
            ert_arithmetic.refuse_out_of_reach("bernoulli_cusum", self.ert, CALIBRATION_STREAMS, CALIBRATION_LENGTH, margin=2)
        self.threshold = None if threshold is None else number("threshold", threshold, low=0.0, low_open=True)
        self.warning_threshold = (
            None if warning_threshold is None else number("warning_threshold", warning_threshold, low=0.0)
        )
        self.min_samples = count("min_samples", min_samples)
        # The thresholds in force; with ert, calibrated each time the rate is learned.
        self._threshold = math.nan if self.ert is not None else (6.0 if threshold is None else self.threshold)
        if self.ert is None and self.warning_threshold is not None and self.warning_threshold >= self._threshold:
            raise ValueError(
                f"warning_threshold ({self.warning_threshold}) must be below threshold ({self._threshold}); "
                "leave it out for three quarters of the threshold"
            )
        self._warning = 0.75 * self._threshold if self.warning_threshold is None else self.warning_threshold
        self._log_odds = math.log(self.odds_ratio)
        self._restart()
        super().__init__(reference=None)

    def _restart(self) -> None:
        self._run = 0  # samples since the restart
        self._errors = 0  # errors among them
        # The stretch under one estimate of the rate: S at its start, its samples and
        # errors so far, and the lowest partial sum C (with 0) in it; S = C - lowest.
        self._start = 0.0
        self._stretch = 0
        self._stretch_errors = 0
        self._lowest = 0.0
        self._cost = 0.0  # ln(1 + (R - 1) p0) in force; 0 while learning

    def _fit_reference(self, reference: np.ndarray) -> None:  # pragma: no cover - no reference
        pass

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        check_errors(self.type_name, values, binary=True)
        return run_batch(self, values, self._scan)

    @property
    def rate(self) -> float | None:
        """The in-control error rate the test runs with; None while it is still learned."""
        if self._run < self.min_samples:
            return None
        return math.expm1(self._cost) / (self.odds_ratio - 1.0)

    def _renew_rate(self) -> None:
        """Start a stretch with the rate estimated from every sample since the restart."""
        self._start = self._statistic()  # S so far, under the rate in force until now
        rate = (self._errors + 0.5) / (self._run + 1.0)
        self._cost = math.log1p((self.odds_ratio - 1.0) * rate)
        self._stretch, self._stretch_errors, self._lowest = 0, 0, 0.0

    def _statistic(self) -> float:
        return self._start + (self._stretch_errors * self._log_odds - self._stretch * self._cost) - self._lowest

    def _scan(self, values: np.ndarray) -> Scan:
        if self._run < self.min_samples:  # learning the rate: no test
            size = min(len(values), self.min_samples - self._run)
            self._run += size
            self._errors += int(np.count_nonzero(values[:size]))
            if self._run == self.min_samples:
                if self.ert is not None:
                    self._calibrate(self._errors)
                self._renew_rate()
            codes = np.full(size, CARRY, dtype=np.int8)
            return Scan(codes, np.zeros(size), self._warning, self._threshold, False)
        size = min(len(values), self.min_samples - self._stretch % self.min_samples)
        errors = np.cumsum(values[:size] != 0.0) + self._stretch_errors
        samples = np.arange(1, size + 1) + self._stretch
        # C_t from integer counts: the same numbers whatever the batches were.
        partial = self._start + (errors * self._log_odds - samples * self._cost)
        lowest = np.minimum(np.minimum.accumulate(partial), self._lowest)  # _lowest starts at 0
        statistic = partial - lowest
        drift = statistic >= self._threshold
        stop = int(np.argmax(drift)) if drift.any() else size - 1
        codes = np.where(drift, 2, np.where(statistic >= self._warning, 1, 0))[: stop + 1]
        restarted = bool(drift[stop])
        self._run += stop + 1
        self._errors += int(errors[stop] - self._stretch_errors)
        if restarted:
            self._restart()
        else:
            self._stretch, self._stretch_errors = int(samples[stop]), int(errors[stop])
            self._lowest = float(lowest[stop])
            if self._stretch % self.min_samples == 0:
                self._renew_rate()
        return Scan(codes, statistic[: stop + 1], self._warning, self._threshold, restarted)

    def _calibrate(self, learned_errors: int) -> None:
        """Thresholds for ``ert`` (and ``ert / 10`` for the warning), for a rate learned from
        ``learned_errors`` errors among ``min_samples`` samples."""
        assert self.ert is not None
        warning_ert = max(10.0, self.ert / 10.0)
        thresholds = _thresholds(learned_errors, self.min_samples, self.odds_ratio, self.ert, warning_ert)
        self._threshold = float(thresholds[0])
        if self.warning_threshold is None:
            self._warning = min(float(thresholds[1]), self._threshold)
        else:
            # A warning above the calibrated drift threshold could never show.
            self._warning = min(self.warning_threshold, self._threshold)

    def _reading(self) -> Reading:
        return Reading(self._statistic(), self._threshold, None, self._warning)

    def _samples_to_test(self) -> int:
        return samples_to_test(self.level, self._run, self.min_samples)

    def _snapshot_state(self) -> dict[str, Any]:
        return {
            "run": self._run,
            "errors": self._errors,
            "start": self._start,
            "stretch": self._stretch,
            "stretch_errors": self._stretch_errors,
            "lowest": self._lowest,
            "cost": self._cost,
            "threshold": self._threshold,
            "warning": self._warning,
        }

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        self._run = int(state["run"])
        self._errors = int(state["errors"])
        self._start = float(state["start"])
        self._stretch = int(state["stretch"])
        self._stretch_errors = int(state["stretch_errors"])
        self._lowest = float(state["lowest"])
        self._cost = float(state["cost"])
        if self.ert is not None and "threshold" in state:
            self._threshold, self._warning = float(state["threshold"]), float(state["warning"])
        elif self.ert is not None and self._run >= self.min_samples:
            # A snapshot without them: calibrate for the rate it has learned so far.
            self._calibrate(round(self._errors * self.min_samples / self._run))


@functools.lru_cache(maxsize=1024)
def _thresholds(learned_errors: int, min_samples: int, odds_ratio: float, ert: float, warning_ert: float) -> np.ndarray:
    """The drift and warning thresholds for one learned error count, kept for the process
    (every restart of every detector with the same settings and count reuses them) and in
    the daemon's cache.

    A restart re-learns the rate, so false alarms cluster after restarts, and each run
    between two alarms has its own learned rate: the thresholds are set by the alarm rate
    pooled over streams that each draw their own rate (``ert.threshold_for_alarm_rate``
    with one group: the pooled rate of a renewal process is one over its mean run)."""
    length = ert_arithmetic.stream_length_for(ert, at_most=CALIBRATION_LENGTH)

    def simulate() -> np.ndarray:
        from . import bernoulli_cusum_kernels

        seed = learned_errors * 1_000_003 + min_samples
        passages = bernoulli_cusum_kernels.simulate_passages(
            learned_errors, min_samples, odds_ratio, CALIBRATION_STREAMS, length, CALIBRATION_LEVELS, 1, seed
        )
        return np.array([
            ert_arithmetic.threshold_for_alarm_rate(passages, CALIBRATION_LEVELS, length, target)
            for target in (ert, warning_ert)
        ])

    settings = [learned_errors, min_samples, odds_ratio, ert, warning_ert, length, CALIBRATION_STREAMS]
    thresholds = active_cache().array(
        "bernoulli_cusum-calibration", (f"v{CALIBRATION_VERSION}", json.dumps(settings)), simulate, shape=(2,)
    )
    thresholds.setflags(write=False)
    return thresholds
