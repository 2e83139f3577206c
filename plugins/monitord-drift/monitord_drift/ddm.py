"""DDM, the Drift Detection Method of Gama et al. (2004), on the error stream."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from numpy.typing import ArrayLike

from ._restarting import check_binary, count, number, samples_to_test
from .base import LEVEL_CODES, DriftDetector, Reading


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
        from . import ddm_kernels as kernels  # compiled on first use, not at import

        check_binary(self.type_name, values)
        codes = np.empty(len(values), dtype=np.int8)
        statistics = np.empty(len(values))
        has_min = self._p_min is not None
        state = kernels.ddm_run(
            values, self._count, self._errors, has_min, self._p_min if has_min else 0.0,
            self._s_min if has_min else 0.0, self.min_samples, self.warning_threshold, self.drift_threshold,
            LEVEL_CODES[self.level], codes, statistics,
        )  # fmt: skip
        self._count, self._errors = int(state[0]), int(state[1])
        self._p_min, self._s_min = (float(state[3]), float(state[4])) if state[2] else (None, None)
        return self._events_from_codes(codes, statistics, {1: self.warning_threshold, 2: self.drift_threshold})

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

