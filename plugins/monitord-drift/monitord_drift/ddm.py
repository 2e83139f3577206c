"""DDM, the Drift Detection Method of Gama et al. (2004), on the error stream."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from numpy.typing import ArrayLike

from ._restarting import CARRY, Scan, check_errors, count, number, run_batch, samples_to_test
from .base import DriftDetector, Reading


class DDM(DriftDetector):
    r"""Drift Detection Method: alarms when the error rate rises above its best level so far.

    While a classifier meets a stationary distribution its error rate $p_n$ (the errors
    among the $n$ samples since the last restart) should fall or hold still; its standard
    deviation, from the binomial, is $s_n = \sqrt{p_n (1 - p_n) / n}$. The test records
    $p_{min}$ and $s_{min}$ at the sample where $p_n + s_n$ is lowest and reports

    $$\text{statistic} = \frac{p_n + s_n - p_{min}}{s_{min}}$$

    so that the paper's conditions read as fixed thresholds: warning where
    $p_n + s_n \ge p_{min} + 2 s_{min}$, drift where $p_n + s_n \ge p_{min} + 3 s_{min}$
    (the decision is made in this form, the paper's). The test runs from the
    ``min_samples``-th sample after the start or a restart; at a drift the statistics
    restart, and the level stays ``drift`` until the test runs again, so that a dashboard
    sees it.

    Where this follows the paper and where river differs:

    * The minimum is recorded only where $s_n > 0$. With no error yet (or only errors),
      $p_n + s_n = 0$ and the paper's rule would make $p_{min} + 3 s_{min} = 0$: every
      later sample would be a drift (river and MOA, which compare with $>$, declare
      drift at the first error). A classifier that is right 30 times in a row at the
      start, common at 99% accuracy, would raise a drift with its first mistake. Not
      recording a minimum of zero width is the smallest change that keeps the test
      meaningful; until the first error the test finds nothing (level ``ok``).
    * The comparisons are $\ge$, as in the paper; river uses $>$. They differ only when
      the two sides are equal to the last bit.
    * river's ``warm_start=w`` tests from the $(w+1)$-th sample; ``min_samples=w+1``
      here. Like river (and MOA), the minimum is only tracked where the test runs.

    The input is the ``error`` signal: 1 for a wrong prediction, 0 for a right one; any
    other value raises ``ValueError`` before the state changes.

    Parameters
    ----------
    warning_threshold
        Standard deviations $s_{min}$ above $p_{min}$ for the warning level.
    drift_threshold
        Standard deviations $s_{min}$ above $p_{min}$ for the drift level.
    min_samples
        Samples after the start or a restart before the test runs (the paper's 30).

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.ddm import DDM

    >>> rng = np.random.default_rng(6)
    >>> detector = DDM()

    The error rate goes from 20% to 80% at sample 1000:

    >>> errors = np.concatenate([rng.random(1000) < 0.2, rng.random(1000) < 0.8])
    >>> for event in detector.update(errors.astype(float)):
    ...     print(event.index, event.level, round(event.statistic, 2), event.threshold)
    313 warning 2.0 2.0
    315 warning 2.07 2.0
    1040 warning 2.0 2.0
    1098 drift 3.02 3.0
    >>> detector.state.level
    'ok'

    References
    ----------
    [^1]: J. Gama, P. Medas, G. Castillo, P. Rodrigues. 2004. Learning with Drift
          Detection. SBIA 2004, LNCS 3171, 286-295.
    """

    type_name: ClassVar[str] = "ddm"
    needs_reference: ClassVar[bool] = False

    def __init__(
        self,
        *,
        warning_threshold: float = 2.0,
        drift_threshold: float = 3.0,
        min_samples: int = 30,
        reference: ArrayLike | None = None,
    ) -> None:
        self.warning_threshold = number("warning_threshold", warning_threshold, low=0.0, low_open=True)
        self.drift_threshold = number("drift_threshold", drift_threshold, low=0.0, low_open=True)
        if self.warning_threshold >= self.drift_threshold:
            raise ValueError(
                f"warning_threshold ({self.warning_threshold}) must be below drift_threshold ({self.drift_threshold})"
            )
        self.min_samples = count("min_samples", min_samples)
        self._restart()
        super().__init__(reference=None)

    def _restart(self) -> None:
        self._count = 0
        self._errors = 0
        self._p_min: float | None = None
        self._s_min: float | None = None

    def _fit_reference(self, reference: np.ndarray) -> None:  # pragma: no cover - no reference
        pass

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        check_errors(self.type_name, values, binary=True)
        return run_batch(self, values, self._scan)

    def _scan(self, values: np.ndarray) -> Scan:
        steps = np.arange(1, len(values) + 1)
        counts = self._count + steps
        errors = self._errors + np.cumsum(values, dtype=np.int64)
        p = errors / counts
        s = np.sqrt(p * (1.0 - p) / counts)
        level = p + s
        tested = counts >= self.min_samples
        eligible = tested & (s > 0.0)
        # The minimum of p + s so far, and the sample it was recorded at (ties: the latest).
        best = math.inf if self._p_min is None else self._p_min + self._s_min  # type: ignore[operator]
        candidates = np.where(eligible, level, math.inf)
        lowest_before = np.minimum.accumulate(np.concatenate(([best], candidates)))[:-1]
        recorded = eligible & (level <= lowest_before)
        at = np.maximum.accumulate(np.where(recorded, steps - 1, -1))
        has_min = (at >= 0) | (self._p_min is not None)
        p_min = np.where(at >= 0, p[np.maximum(at, 0)], np.nan if self._p_min is None else self._p_min)
        s_min = np.where(at >= 0, s[np.maximum(at, 0)], np.nan if self._s_min is None else self._s_min)
        with np.errstate(invalid="ignore"):
            drift = tested & has_min & (level >= p_min + self.drift_threshold * s_min)
            warning = tested & has_min & (level >= p_min + self.warning_threshold * s_min)
            statistic = np.where(has_min, (level - p_min) / np.where(has_min, s_min, 1.0), 0.0)
        stop = int(np.argmax(drift)) if drift.any() else len(values) - 1
        codes = np.where(tested, np.where(drift, 2, np.where(warning, 1, 0)), CARRY)[: stop + 1]
        restarted = bool(drift[stop])
        if restarted:
            self._restart()
        else:
            self._count = int(counts[stop])
            self._errors = int(errors[stop])
            if has_min[stop]:
                self._p_min, self._s_min = float(p_min[stop]), float(s_min[stop])
        return Scan(codes, statistic[: stop + 1], self.warning_threshold, self.drift_threshold, restarted)

    def _reading(self) -> Reading:
        statistic = 0.0
        if self._p_min is not None and self._count:
            p = self._errors / self._count
            s = math.sqrt(p * (1.0 - p) / self._count)
            statistic = (p + s - self._p_min) / self._s_min  # type: ignore[operator]
        return Reading(statistic, self.drift_threshold, None, self.warning_threshold)

    def _samples_to_test(self) -> int:
        return samples_to_test(self.level, self._count, self.min_samples)

    def _snapshot_state(self) -> dict[str, Any]:
        return {"count": self._count, "errors": self._errors, "p_min": self._p_min, "s_min": self._s_min}

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        self._count = int(state["count"])
        self._errors = int(state["errors"])
        self._p_min = None if state["p_min"] is None else float(state["p_min"])
        self._s_min = None if state["s_min"] is None else float(state["s_min"])

