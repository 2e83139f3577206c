"""HDDM_W, the drift detector of Frías-Blanco et al. (2015) with McDiarmid bounds on EWMAs."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, NamedTuple

import numpy as np
from monitord.detectors import DriftEvent
from numpy.typing import ArrayLike

from ._restarting import check_unit, confidences, count, number, samples_to_test
from .base import LEVEL_CODES, DriftDetector, Reading


class _Average(NamedTuple):
    """An exponentially weighted average and the sum of its squared weights (``None``: empty)."""

    value: float | None = None
    weights: float = 1.0


class HDDMW(DriftDetector):
    r"""Hoeffding drift detection with weighted moving averages (the W-test of HDDM).

    An exponentially weighted moving average (EWMA) forgets old errors, so a recent rise
    shows sooner than in the plain average of HDDM_A, and McDiarmid's inequality still
    bounds it without assuming a distribution (values in [0, 1], independent). Each
    average $\hat X = \sum_i w_i X_i$ carries the sum of its squared weights
    $D = \sum_i w_i^2$: it starts at the first value with $D = 1$, then
    $\hat X \leftarrow \lambda X + (1 - \lambda) \hat X$ and
    $D \leftarrow \lambda^2 + (1 - \lambda)^2 D$.

    For an increase, the *cut point* is the latest sample where the EWMA of the whole
    stream since the last restart plus $\sqrt{D \ln(1/\alpha_D) / 2}$ reached a new
    low; $\hat X_1$ is that EWMA as it was then, and $\hat X_2$ an EWMA of the samples
    after the cut. An increase is declared where

    $$\hat X_2 - \hat X_1 > \sqrt{\frac{(D_1 + D_2) \ln(1/\alpha)}{2}}$$

    with $\alpha = \alpha_D$ (``drift_confidence``) for drift and $\alpha_W$
    (``warning_confidence``) for a warning. With ``two_sided=True`` a decrease is tested
    the same way from the cut point of the highest EWMA minus its bound.

    The statistic reported is the difference in units of its McDiarmid scale,
    $T = (\hat X_2 - \hat X_1) / \sqrt{(D_1 + D_2)/2}$ (0 until both averages exist), so
    the thresholds are the constants $\sqrt{\ln(1/\alpha_D)}$ and
    $\sqrt{\ln(1/\alpha_W)}$, and the p-value is McDiarmid's bound $e^{-T^2}$ (1 for
    $T \le 0$). With ``two_sided=True`` the side with the larger $T$ is reported. The
    decision is taken in the form above.

    Where this follows the paper and where river differs: the update rules, strict
    comparisons and $\ln(1/\alpha)$ are those of MOA, written by the paper's first author.
    river starts $D$ at $\lambda^2 + (1-\lambda)^2$ on the first value instead of 1,
    which understates the bound of a fresh average (one value has a squared weight of 1);
    this class does not follow it. The paper restarts at a drift and has no minimum number
    of samples; this class runs the test from the ``min_samples``-th sample after the
    start or a restart (the averages are kept from the first) and holds the level at
    ``drift`` until then, so that a dashboard sees a drift; ``min_samples=1`` is the
    paper's detector.

    Settings under which no stream can raise a drift are refused: the squared weights
    never fall below $\lambda / (2 - \lambda)$, so with
    $\lambda \ln(1/\alpha_D) \ge 2 - \lambda$ (``lambda_ = 0.3`` at the default
    ``drift_confidence``) the drift bound stays above 1.

    The input is the ``error`` signal (1 wrong, 0 right; any value in [0, 1] is
    accepted, as the paper allows); a value outside [0, 1] raises ``ValueError`` before
    the state changes.

    Parameters
    ----------
    drift_confidence
        $\alpha_D$: the probability bound of a false drift at each test.
    warning_confidence
        $\alpha_W$: the same for a warning; larger than ``drift_confidence``.
    lambda_
        $\lambda$, the weight of the newest value in each EWMA: larger forgets faster.
    two_sided
        Also detect decreases of the error rate (the paper's two-sided test).
    min_samples
        Samples after the start or a restart before the test runs.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.hddm_w import HDDMW

    >>> rng = np.random.default_rng(2)
    >>> detector = HDDMW()

    The error rate goes from 20% to 80% at sample 1000:

    >>> errors = np.concatenate([rng.random(1000) < 0.2, rng.random(1000) < 0.8])
    >>> for event in detector.update(errors.astype(float)):
    ...     print(event.index, event.level, round(event.statistic, 2), round(event.threshold, 2))
    1011 warning 2.43 2.3
    1013 drift 2.77 2.63

    References
    ----------
    [^1]: I. Frías-Blanco, J. del Campo-Ávila, G. Ramos-Jiménez, R. Morales-Bueno,
          A. Ortiz-Díaz, Y. Caballero-Mota. 2015. Online and non-parametric drift detection
          methods based on Hoeffding's bounds. IEEE Transactions on Knowledge and Data
          Engineering 27(3), 810-823.
    """

    type_name: ClassVar[str] = "hddm_w"
    needs_reference: ClassVar[bool] = False

    def __init__(
        self,
        *,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        lambda_: float = 0.05,
        two_sided: bool = False,
        min_samples: int = 30,
        reference: ArrayLike | None = None,
    ) -> None:
        self.drift_confidence, self.warning_confidence = confidences(drift_confidence, warning_confidence)
        self.lambda_ = number("lambda_", lambda_, low=0.0, low_open=True, high=1.0)
        if not isinstance(two_sided, bool):
            raise ValueError(f"two_sided must be true or false, got {two_sided!r}")
        self.two_sided = two_sided
        self.min_samples = count("min_samples", min_samples)
        self._keep = 1.0 - self.lambda_
        self._new_square = self.lambda_ * self.lambda_
        self._keep_square = self._keep * self._keep
        self._drift_log = math.log(1.0 / self.drift_confidence)
        self._warning_log = math.log(1.0 / self.warning_confidence)
        self._refuse_unreachable_drift()
        self._restart()
        super().__init__(reference=None)

    def _refuse_unreachable_drift(self) -> None:
        """Refuse settings under which no stream can ever raise a drift.

        Every squared-weight sum stays above its limit ``lambda / (2 - lambda)``, so the
        drift bound stays above ``sqrt(limit * ln(1/alpha_D))``; two averages of values in
        [0, 1] never differ by more than 1. (A warning's bound is lower, so it is covered.)
        """
        floor = self.lambda_ / (2.0 - self.lambda_)
        if floor * self._drift_log >= 1.0:
            raise ValueError(
                f"hddm_w can never alarm with lambda_ = {self.lambda_} and drift_confidence = "
                f"{self.drift_confidence}: its drift bound stays above {math.sqrt(floor * self._drift_log):.3g}, "
                f"and two averages of errors never differ by more than 1; set lambda_ below "
                f"{2.0 / (self._drift_log + 1.0):.3g}, or drift_confidence above "
                f"{math.exp(-1.0 / floor):.3g}"
            )

    def _restart(self) -> None:
        self._run = 0
        self._total = _Average()
        # Per side (increase, decrease): the average at the cut, the average since, and
        # the key of the cut (average plus bound; negated average plus bound for the
        # decrease side, so that both sides look for a new low; +inf before any cut).
        self._before = [_Average(), _Average()]
        self._since = [_Average(), _Average()]
        self._cut_key = [math.inf, math.inf]
        self._statistic = 0.0

    def _fit_reference(self, reference: np.ndarray) -> None:  # pragma: no cover - no reference
        pass

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        from . import hddm_kernels as kernels  # compiled on first use, not at import

        check_unit(self.type_name, values)
        codes = np.empty(len(values), dtype=np.int8)
        statistics = np.empty(len(values))
        state = [float(self._run), *_plain(self._total), self._statistic]
        for side in range(2):
            state += [self._cut_key[side], *_plain(self._before[side]), *_plain(self._since[side])]
        array = np.array(state, dtype=np.float64)
        kernels.hddm_w_run(
            values, array, self.lambda_, self._drift_log, self._warning_log, self.two_sided, self.min_samples,
            LEVEL_CODES[self.level], codes, statistics,
        )  # fmt: skip
        self._run = int(array[0])
        self._total = _average(array[1], array[2])
        self._statistic = float(array[3])
        for side in range(2):
            at = 4 + 5 * side
            self._cut_key[side] = float(array[at])
            self._before[side] = _average(array[at + 1], array[at + 2])
            self._since[side] = _average(array[at + 3], array[at + 4])
        return self._events_from_codes(
            codes, statistics, {1: math.sqrt(self._warning_log), 2: math.sqrt(self._drift_log)}
        )

    # -- reading and snapshots ------------------------------------------------------------

    def _reading(self) -> Reading:
        statistic = self._statistic
        p_value = math.exp(-statistic * statistic) if statistic > 0 else 1.0
        return Reading(statistic, math.sqrt(self._drift_log), p_value, math.sqrt(self._warning_log))

    def _samples_to_test(self) -> int:
        return samples_to_test(self.level, self._run, self.min_samples)

    def _snapshot_state(self) -> dict[str, Any]:
        return {
            "run": self._run,
            "total": list(self._total),
            "before": [list(average) for average in self._before],
            "since": [list(average) for average in self._since],
            "cut_key": [None if math.isinf(key) else key for key in self._cut_key],
            "statistic": self._statistic,
        }

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        self._run = int(state["run"])
        self._total = _average(*state["total"])
        self._before = [_average(*average) for average in state["before"]]
        self._since = [_average(*average) for average in state["since"]]
        self._cut_key = [math.inf if key is None else float(key) for key in state["cut_key"]]
        self._statistic = float(state["statistic"])


def _plain(average: _Average) -> tuple[float, float]:
    """An average as the compiled loop takes it: NaN for an empty one."""
    return (math.nan if average.value is None else average.value, average.weights)


def _average(value: float | None, weights: float) -> _Average:
    if value is None or math.isnan(value):
        return _Average(None, 1.0)
    return _Average(float(value), float(weights))
