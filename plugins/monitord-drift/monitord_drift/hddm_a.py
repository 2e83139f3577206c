"""HDDM_A, the drift detector of Frías-Blanco et al. (2015) with Hoeffding bounds on averages."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from numpy.typing import ArrayLike

from ._restarting import CARRY, Scan, check_errors, confidences, count, run_batch, samples_to_test
from .base import DriftDetector, Reading


class HDDMA(DriftDetector):
    r"""Hoeffding drift detection with moving averages (the A-test of HDDM).

    No distribution is assumed, only that the values lie in [0, 1]: the bounds come from
    Hoeffding's inequality, so the confidences hold for any error process with
    independent samples. With $\bar X_n$ the mean of the $n$ values since the last
    restart and $\epsilon_n = \sqrt{\ln(1/\alpha_D) / (2n)}$, the *cut point* $c$ is the
    latest $n$ where $\bar X_n + \epsilon_n$ was lowest: the best the stream has been,
    with confidence. An increase is declared where

    $$\bar X_n - \bar X_c \ge \epsilon_\alpha = \sqrt{\frac{m}{2} \ln\frac{2}{\alpha}},
      \qquad m = \frac{n - c}{c\, n}$$

    with $\alpha = \alpha_D$ (``drift_confidence``) for drift and $\alpha_W$
    (``warning_confidence``) for a warning. With ``two_sided=True`` a decrease is tested
    the same way against the cut point of the highest $\bar X_n - \epsilon_n$.

    The statistic reported is the difference in units of its Hoeffding scale,
    $T = (\bar X_n - \bar X_c) \sqrt{2/m}$ (0 while $n = c$), so the thresholds are the
    constants $\sqrt{\ln(2/\alpha_D)}$ and $\sqrt{\ln(2/\alpha_W)}$, and the p-value is
    Hoeffding's bound $\min(1, 2 e^{-T^2})$ (1 for $T \le 0$). With ``two_sided=True``
    the side with the larger $T$ is reported. The decision is taken in the form above.

    Where this follows the paper (and MOA, written by its first author, which river
    ports faithfully): the $\ln(2/\alpha)$ of the test and the cut-point rule are MOA's.
    The paper restarts at a drift and has no minimum number of samples; this class runs
    the test from the ``min_samples``-th sample after the start or a restart (the
    statistics are kept from the first) and holds the level at ``drift`` until then, so
    that a dashboard sees a drift; ``min_samples=1`` is the paper's detector exactly.

    The input is the ``error`` signal (1 wrong, 0 right; any value in [0, 1] is
    accepted, as the paper allows); a value outside [0, 1] raises ``ValueError`` before
    the state changes.

    Parameters
    ----------
    drift_confidence
        $\alpha_D$: the probability bound of a false drift at each test.
    warning_confidence
        $\alpha_W$: the same for a warning; larger than ``drift_confidence``.
    two_sided
        Also detect decreases of the error rate (the paper's two-sided test).
    min_samples
        Samples after the start or a restart before the test runs.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.hddm_a import HDDMA

    >>> rng = np.random.default_rng(2)
    >>> detector = HDDMA()

    The error rate goes from 20% to 80% at sample 1000:

    >>> errors = np.concatenate([rng.random(1000) < 0.2, rng.random(1000) < 0.8])
    >>> for event in detector.update(errors.astype(float)):
    ...     print(event.index, event.level, round(event.statistic, 2), round(event.threshold, 2))
    1019 warning 2.58 2.45
    1021 drift 2.83 2.76

    References
    ----------
    [^1]: I. Frías-Blanco, J. del Campo-Ávila, G. Ramos-Jiménez, R. Morales-Bueno,
          A. Ortiz-Díaz, Y. Caballero-Mota. 2015. Online and non-parametric drift detection
          methods based on Hoeffding's bounds. IEEE Transactions on Knowledge and Data
          Engineering 27(3), 810-823.
    """

    type_name: ClassVar[str] = "hddm_a"
    needs_reference: ClassVar[bool] = False

    def __init__(
        self,
        *,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        two_sided: bool = False,
        min_samples: int = 30,
        reference: ArrayLike | None = None,
    ) -> None:
        self.drift_confidence, self.warning_confidence = confidences(drift_confidence, warning_confidence)
        if not isinstance(two_sided, bool):
            raise ValueError(f"two_sided must be true or false, got {two_sided!r}")
        self.two_sided = two_sided
        self.min_samples = count("min_samples", min_samples)
        # ln(1/alpha_D) / 2, the constant of the cut-point bound; the tests' ln(2/alpha).
        self._cut_log = math.log(1.0 / self.drift_confidence) / 2.0
        self._drift_log = math.log(2.0 / self.drift_confidence)
        self._warning_log = math.log(2.0 / self.warning_confidence)
        self._restart()
        super().__init__(reference=None)

    def _restart(self) -> None:
        self._count = 0
        self._total = 0.0
        # Cut points (samples, sum) for the increase and decrease tests; 0 samples: none yet.
        self._low = (0, 0.0)
        self._high = (0, 0.0)
        self._statistic = 0.0

    def _fit_reference(self, reference: np.ndarray) -> None:  # pragma: no cover - no reference
        pass

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        check_errors(self.type_name, values, binary=False)
        return run_batch(self, values, self._scan)

    def _bound(self, counts: np.ndarray | float) -> np.ndarray | float:
        return np.sqrt(self._cut_log / counts)

    def _cut(
        self, counts: np.ndarray, totals: np.ndarray, means: np.ndarray, kept: tuple[int, float], sign: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cut point in force at each sample: its sample count and its sum."""
        # For increases the cut is where mean + bound is lowest; for decreases where
        # mean - bound is highest (sign -1 turns that into a lowest too). Ties: the latest.
        key = sign * means + self._bound(counts)
        kept_n, kept_sum = kept
        before = math.inf if kept_n == 0 else sign * (kept_sum / kept_n) + float(self._bound(float(kept_n)))
        lowest = np.minimum.accumulate(np.concatenate(([before], key)))[:-1]
        moved = key <= lowest
        at = np.maximum.accumulate(np.where(moved, np.arange(len(key)), -1))
        cut_n = np.where(at >= 0, counts[np.maximum(at, 0)], kept_n)
        cut_sum = np.where(at >= 0, totals[np.maximum(at, 0)], kept_sum)
        return cut_n, cut_sum

    def _side(
        self, counts: np.ndarray, means: np.ndarray, cut_n: np.ndarray, cut_sum: np.ndarray, sign: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The statistic and the drift and warning decisions of one side."""
        with np.errstate(invalid="ignore", divide="ignore"):
            m = (counts - cut_n) / cut_n * (1.0 / counts)
            difference = sign * (means - cut_sum / cut_n)
            open_ = cut_n != counts
            drift = open_ & (difference >= np.sqrt(m / 2.0 * self._drift_log))
            warning = open_ & (difference >= np.sqrt(m / 2.0 * self._warning_log))
            statistic = np.where(open_, difference * np.sqrt(2.0 / np.where(open_, m, 1.0)), 0.0)
        return statistic, drift, warning

    def _scan(self, values: np.ndarray) -> Scan:
        size = len(values)
        counts = (self._count + np.arange(1, size + 1)).astype(np.float64)
        totals = np.cumsum(np.concatenate(([self._total], values)))[1:]
        means = totals / counts
        low_n, low_sum = self._cut(counts, totals, means, self._low, 1.0)
        statistic, drift, warning = self._side(counts, means, low_n, low_sum, 1.0)
        high_n, high_sum = self._cut(counts, totals, means, self._high, -1.0)
        if self.two_sided:
            down, down_drift, down_warning = self._side(counts, means, high_n, high_sum, -1.0)
            statistic = np.maximum(statistic, down)
            drift, warning = drift | down_drift, warning | down_warning
        tested = counts >= self.min_samples
        drift &= tested
        stop = int(np.argmax(drift)) if drift.any() else size - 1
        codes = np.where(tested, np.where(drift, 2, np.where(warning, 1, 0)), CARRY)[: stop + 1]
        restarted = bool(drift[stop])
        if restarted:
            self._restart()
        else:
            self._count = int(counts[stop])
            self._total = float(totals[stop])
            self._low = (int(low_n[stop]), float(low_sum[stop]))
            self._high = (int(high_n[stop]), float(high_sum[stop]))
            self._statistic = float(statistic[stop])
        return Scan(codes, statistic[: stop + 1], math.sqrt(self._warning_log), math.sqrt(self._drift_log), restarted)

    def _reading(self) -> Reading:
        statistic = self._statistic
        p_value = min(1.0, 2.0 * math.exp(-statistic * statistic)) if statistic > 0 else 1.0
        return Reading(statistic, math.sqrt(self._drift_log), p_value, math.sqrt(self._warning_log))

    def _samples_to_test(self) -> int:
        return samples_to_test(self.level, self._count, self.min_samples)

    def _snapshot_state(self) -> dict[str, Any]:
        return {
            "count": self._count,
            "total": self._total,
            "low": list(self._low),
            "high": list(self._high),
            "statistic": self._statistic,
        }

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        self._count = int(state["count"])
        self._total = float(state["total"])
        self._low = (int(state["low"][0]), float(state["low"][1]))
        self._high = (int(state["high"][0]), float(state["high"][1]))
        self._statistic = float(state["statistic"])
