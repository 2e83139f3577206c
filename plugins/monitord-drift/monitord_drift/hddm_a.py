"""HDDM_A, the drift detector of Frías-Blanco et al. (2015) with Hoeffding bounds on averages."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from numpy.typing import ArrayLike

from ._restarting import check_unit, confidences, count, samples_to_test
from .base import LEVEL_CODES, DriftDetector, Reading


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
        from . import hddm_kernels as kernels  # compiled on first use, not at import

        check_unit(self.type_name, values)
        codes = np.empty(len(values), dtype=np.int8)
        statistics = np.empty(len(values))
        state = np.array([self._count, self._total, *self._low, *self._high, self._statistic], dtype=np.float64)
        kernels.hddm_a_run(
            values, state, self._cut_log, self._drift_log, self._warning_log, self.two_sided, self.min_samples,
            LEVEL_CODES[self.level], codes, statistics,
        )  # fmt: skip
        self._count, self._total = int(state[0]), float(state[1])
        self._low = (int(state[2]), float(state[3]))
        self._high = (int(state[4]), float(state[5]))
        self._statistic = float(state[6])
        return self._events_from_codes(
            codes, statistics, {1: math.sqrt(self._warning_log), 2: math.sqrt(self._drift_log)}
        )

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
