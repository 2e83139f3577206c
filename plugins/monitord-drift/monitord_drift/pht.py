"""Page-Hinkley test on a signal standardised against its reference."""

from __future__ import annotations

import json
import logging
import math
import zlib
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
from monitord.detectors import DriftEvent
from monitord.reference_cache import active_cache
from numpy.typing import ArrayLike

from . import ert as ert_arithmetic
from ._restarting import count, number, samples_to_test
from .base import LEVEL_CODES, DriftDetector, Reading

log = logging.getLogger("monitord.drift.pht")

Direction = Literal["up", "down", "both"]
_DIRECTIONS: tuple[str, ...] = ("up", "down", "both")
#: The forgetting factor is applied by scaling with alpha**-j inside blocks of at most
#: this many samples (and alpha**-block stays below e**30), then the sums are rebased.
_LARGEST_BLOCK = 4096
#: Clean streams simulated per ERT calibration, and the longest of them: 1,000 streams of
#: 50,000 samples take 0.5-1 s here (1 s with the 2 cores shared), and place thresholds for
#: ERTs up to 2.5 million samples.
CALIBRATION_STREAMS = 1_000
CALIBRATION_LENGTH = 50_000
#: Streams per resampled reference: 50 references of 20 streams each.
CALIBRATION_PER_REFERENCE = 20
#: The thresholds tried, in reference standard deviations (1.6 % apart; interpolated).
CALIBRATION_LEVELS = np.geomspace(0.1, 1000.0, 600)
#: Part of the cache key: a change of the simulation must not reuse old thresholds.
CALIBRATION_VERSION = 5


class PageHinkley(DriftDetector):
    r"""Page-Hinkley test for a shift of the mean, in units of the reference's spread.

    Every value is first standardised against the reference,
    $z_t = (x_t - \mu_R) / \sigma_R$, so that ``delta``, ``warning_threshold`` and
    ``threshold`` mean the same on any signal: with the defaults, a shift of half a
    reference standard deviation is found after a median of 75 samples, while
    unit-variance noise raises three or four false alarms per million samples. The
    libraries take the threshold in the raw units of the input, which is why their
    defaults alarm on plain N(0, 1) noise (river's: about 31 times in 50,000 samples).

    The statistic, for the samples $t = r+1, r+2, \dots$ since the last restart $r$:

    $$\bar z_t = \frac{\sum_{i=r+1}^{t} z_i}{c_0 + t - r}, \qquad d_t = z_t - \bar z_t$$

    $$U_t = \max(0,\ \alpha U_{t-1} + d_t - \delta), \qquad
      L_t = \max(0,\ \alpha L_{t-1} - d_t - \delta), \qquad U_r = L_r = 0$$

    $PH_t$ is $U_t$ for ``direction="up"``, $L_t$ for ``"down"`` and $\max(U_t, L_t)$ for
    ``"both"``. $c_0$ is the size of the reference until the first drift (the running
    mean starts as the reference's mean, so a stream that differs from the reference from
    its first sample is caught) and 0 after a drift (the new regime is unknown). The level
    is ``drift`` where $PH_t >$ ``threshold``, ``warning`` where $PH_t >$
    ``warning_threshold``, tested from the ``min_samples``-th sample after a restart. At a
    drift the statistic restarts ($r = t$), and the level stays ``drift`` until the test
    runs again ``min_samples`` samples later, so that a dashboard sees it; a drift found
    at that very sample restarts the statistic again without a second event.

    Why this form, where the libraries disagree:

    * *Clamping versus minimum tracking.* Page's test tracks
      $m_T - \min_{t \le T} m_t$ with $m_T = \sum (d_t - \delta)$; with $\alpha = 1$ and
      $m_0 = 0$ counted in the minimum this is exactly $U_T$ above. With $\alpha < 1$ the
      two part ways: river applies the factor to $m_T$ but not to its stored minimum, so
      in stationary data $m_T$ settles around $-\delta/(1-\alpha)$ and wanders with a
      standard deviation of $\sqrt{1/(1-\alpha^2)}$ (71 for $\alpha = 0.9999$) away from
      a minimum that never forgets: a source of false alarms. Clamping at 0 and then
      forgetting only discounts old evidence, which is what a forgetting factor is for.
    * *One- or two-sided.* Two one-sided statistics, each with its own tolerance, and
      their maximum for ``"both"``: a two-sided test on $|m_T|$ would let a rise cancel
      against an earlier fall. river's starting value of -1 for the decrease maximum is
      not followed (both sides start at 0).
    * *Mean.* The deviation is taken from the running mean including the current sample,
      as in Page-Hinkley for data streams (Gama et al.), rather than from a fixed target,
      so that after a restart the test settles on the new regime instead of alarming
      again and again for as long as the shift lasts.

    A batch runs as one compiled loop (``pht_kernels.pht_run``): $U_t$ is kept as a sum
    minus its running minimum (with 0), and scaling the increments by $\alpha^{-j}$ makes
    the forgetting part of that sum too. The sums run in sample order and their blocks
    restart at fixed sample counts, so any split of a stream into batches gives
    bit-identical results.

    What a restart does not do: it restarts the mean, not the scale. After a drift the
    test needs a few hundred samples of the new regime before it can see the next
    half-sigma shift (a false alarm just before a change can hide the change), and a
    regime with a much larger spread than the reference (say $\{0, 1\}$ becoming
    $\{0, \dots, 7\}$) keeps alarming every few dozen samples: the stream is still
    unlike the reference, in units of the reference.

    Each event says whether the shift it found points back toward the reference
    (``toward_reference``): true where the mean since the last restart lies more than
    ``delta`` off the reference mean and the shift goes back toward it, as when a drifted
    stream returns to normal. The alerting takes such an event as the end of a drift, not
    as a new one.

    A reference without spread (a constant, or a standard deviation below $10^{-9}$ of
    its magnitude) gives no unit to standardise with: the test then runs in the raw units
    of the signal ($\sigma_R$ taken as 1, as the other libraries do) and logs a warning.
    Standardised values are clipped to $\pm 10^{12}$ so that one absurd value cannot
    overflow the sums.

    Parameters
    ----------
    delta
        Magnitude tolerance, in reference standard deviations: shifts smaller than this
        are absorbed. Detection is fastest for shifts around ``2 * delta``.
    ert
        Expected run time between false alarms, in samples of data like the reference:
        when given, the drift threshold is calibrated to it (and the warning threshold to
        ``ert / 10`` unless ``warning_threshold`` is given) by simulating clean streams
        drawn from the reference, the test fitted each time on a bootstrap copy of it, so
        the threshold allows for the reference's own sampling error (monitord_drift.ert).
        Costs about a second when the reference is fitted, cached by the daemon.
        Give either ``ert`` or ``threshold``.
    threshold
        Drift threshold $\lambda$ on $PH_t$, in reference standard deviations; ``None``
        (the default) is 20 without ``ert`` (three or four false alarms per million
        samples of unit-variance noise; ``ert=100_000`` puts it near 19 for a reference of
        500 normal values), calibrated with ``ert``.
    warning_threshold
        Warning threshold on $PH_t$, below the drift threshold; ``None`` (the default) is
        three quarters of ``threshold`` (lower, unit-variance noise crosses it every
        thousand samples or so and the warning says nothing), or with ``ert`` the
        threshold calibrated for ``ert / 10``.
    alpha
        Forgetting factor in (0, 1] applied to the accumulated evidence; 1 keeps it all
        (the classic test).
    min_samples
        Samples after the start or a restart before the test runs.
    direction
        ``"up"`` for increases of the mean, ``"down"`` for decreases, ``"both"``.
    reference_size
        Samples taken from the start of the stream as the reference when the model
        provides none.
    reference
        The model's saved reference values, if any.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_drift.pht import PageHinkley

    >>> rng = np.random.default_rng(42)
    >>> detector = PageHinkley(reference_size=200)

    Noise with unit variance, then its mean moves by half a standard deviation:

    >>> stream = np.concatenate([rng.normal(0.0, 1.0, 3000), rng.normal(0.5, 1.0, 1000)])
    >>> for event in detector.update(stream):
    ...     print(event.index, event.level, round(event.statistic, 2), event.threshold)
    1948 warning 15.31 15.0
    3013 warning 15.28 15.0
    3034 drift 20.66 20.0
    >>> detector.state.level, detector.state.reference_samples
    ('ok', 200)

    References
    ----------
    [^1]: E. S. Page. 1954. Continuous Inspection Schemes. Biometrika 41(1/2), 100-115.
    [^2]: D. V. Hinkley. 1971. Inference about the change-point from cumulative sum tests.
          Biometrika 58(3), 509-523.
    [^3]: J. Gama, R. Sebastião, P. P. Rodrigues. 2013. On evaluating stream learning
          algorithms. Machine Learning 90(3), 317-346.
    """

    type_name: ClassVar[str] = "pht"

    def __init__(
        self,
        *,
        delta: float = 0.25,
        ert: float | None = None,
        threshold: float | None = None,
        warning_threshold: float | None = None,
        alpha: float = 1.0,
        min_samples: int = 30,
        direction: Direction = "both",
        reference_size: int = 500,
        reference: ArrayLike | None = None,
    ) -> None:
        self.delta = number("delta", delta, low=0.0)
        self.ert = ert_arithmetic.ert_instead_of(ert, threshold=threshold)
        if self.ert is not None:
            # Twice the streams asked: the restarting statistic's alarms cluster.
            ert_arithmetic.refuse_out_of_reach("pht", self.ert, CALIBRATION_STREAMS, CALIBRATION_LENGTH, margin=2)
        self.threshold = None if threshold is None else number("threshold", threshold, low=0.0, low_open=True)
        self.warning_threshold = (
            None if warning_threshold is None else number("warning_threshold", warning_threshold, low=0.0)
        )
        # The thresholds in force: calibrated when the reference is fitted if ert is given.
        self._threshold = math.nan if self.ert is not None else (20.0 if threshold is None else self.threshold)
        if self.ert is None and self.warning_threshold is not None and self.warning_threshold >= self._threshold:
            raise ValueError(
                f"warning_threshold ({self.warning_threshold}) must be below threshold ({self._threshold}); "
                "leave it out for three quarters of the threshold"
            )
        self.alpha = number("alpha", alpha, low=0.0, low_open=True, high=1.0)
        self.min_samples = count("min_samples", min_samples)
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(_DIRECTIONS)}; got {direction!r}")
        self.direction = direction

        self._warning = 0.75 * self._threshold if self.warning_threshold is None else self.warning_threshold
        self._sides = {"up": (1.0,), "down": (-1.0,), "both": (1.0, -1.0)}[direction]
        if self.alpha == 1.0:
            self._block = _LARGEST_BLOCK
        else:
            self._block = max(1, min(_LARGEST_BLOCK, int(30.0 / -math.log(self.alpha))))
        exponents = np.arange(self._block + 1, dtype=np.float64)
        # Looked up, never recomputed, so every path multiplies by the same numbers.
        self._decay = np.power(self.alpha, exponents)
        self._growth = np.power(self.alpha, -exponents)
        self._center, self._scale = 0.0, 1.0
        self._restart(prior=0)
        super().__init__(reference=reference, reference_size=reference_size)

    # -- the statistic ------------------------------------------------------------------

    def _fit_reference(self, reference: np.ndarray) -> None:
        center = float(np.mean(reference))
        scale = float(np.std(reference, ddof=1))
        if not (math.isfinite(center) and math.isfinite(scale) and scale > 1e-9 * max(1.0, abs(center))):
            log.warning(
                "the pht reference (%d values, mean %r, std %r) has no usable spread; "
                "delta and the thresholds apply in the signal's raw units",
                len(reference), center, scale,
            )
            scale = 1.0
            if not math.isfinite(center):
                center = 0.0
        self._center, self._scale = center, scale
        if self.ert is not None:
            self._calibrate(reference)
        self._restart(prior=len(reference))

    def _calibrate(self, reference: np.ndarray) -> None:
        """Thresholds for ``ert`` (and ``ert / 10`` for the warning) from simulated clean streams.

        The streams run the test as it runs after a restart (the mean learned from the
        stream alone), which is how it runs between two false alarms; its early means are
        noisy, so alarms cluster after a restart and the threshold is set by the alarm
        rate pooled over streams and references (``ert.threshold_for_alarm_rate``).
        """
        assert self.ert is not None
        population = np.ascontiguousarray(reference, dtype=np.float64)
        length = ert_arithmetic.stream_length_for(self.ert, at_most=CALIBRATION_LENGTH)
        warning_ert = max(10.0, self.ert / 10.0)

        def simulate() -> np.ndarray:
            from . import pht_kernels

            seed = zlib.crc32(population.tobytes())
            up, down = self.direction in ("up", "both"), self.direction in ("down", "both")
            passages = pht_kernels.simulate_passages(
                population, CALIBRATION_STREAMS, length, self.delta, self.alpha, up, down, self.min_samples,
                0, CALIBRATION_LEVELS, CALIBRATION_PER_REFERENCE, seed,
            )  # fmt: skip
            groups = CALIBRATION_STREAMS // CALIBRATION_PER_REFERENCE
            return np.array([
                ert_arithmetic.threshold_for_alarm_rate(passages, CALIBRATION_LEVELS, length, ert, groups=groups)
                for ert in (self.ert, warning_ert)
            ])

        settings = [self.delta, self.alpha, self.direction, self.min_samples, self.ert, length, CALIBRATION_STREAMS]
        inputs = (f"v{CALIBRATION_VERSION}", json.dumps(settings), population.tobytes())
        try:
            thresholds = active_cache().array("pht-calibration", inputs, simulate, shape=(2,))
        except ValueError as error:
            # Small or lumpy references do this: a redrawn copy that misses its few outlying
            # values fits a scale those values then exceed by far, at once.
            raise ValueError(
                f"pht cannot set a threshold for an ert of {self.ert:g} on this reference of "
                f"{len(population)} values ({error}); some redrawn copies of the reference fit a detector "
                "that alarms at once, which a reference with more values (or fewer far-out ones) avoids: "
                "build the reference from more images, lower ert, or set a fixed threshold instead of ert"
            ) from None
        self._threshold = float(thresholds[0])
        if self.warning_threshold is None:
            self._warning = min(float(thresholds[1]), self._threshold)
        elif self.warning_threshold >= self._threshold:
            raise ValueError(
                f"warning_threshold ({self.warning_threshold}) must be below the drift threshold calibrated for "
                f"an ert of {self.ert:g} ({self._threshold:.4g}); leave it out for the threshold of ert / 10"
            )

    def _restart(self, *, prior: int) -> None:
        # Per side: the scaled sum D since the block start and its running minimum M
        # (with 0 for the clamp); the statistic is (D - M) * alpha**age.
        self._sums = [0.0 for _ in self._sides]
        self._minima = [0.0 for _ in self._sides]
        self._age = 0
        self._mean_sum = 0.0
        self._mean_count = prior
        self._run = 0

    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        from . import pht_kernels as kernels  # compiled on first use, not at import

        codes = np.empty(len(values), dtype=np.int8)
        statistics = np.empty(len(values))
        toward = np.empty(len(values), dtype=np.bool_)
        up, down = self.direction != "down", self.direction != "up"
        # The kernel keeps both sides; a one-sided test stores only its own.
        rise = (self._sums[0], self._minima[0]) if up else (0.0, 0.0)
        fall = (self._sums[-1], self._minima[-1]) if down else (0.0, 0.0)
        state = kernels.pht_run(
            values, self._center, self._scale, self.delta, up, down, self._warning, self._threshold,
            self.min_samples, self._growth, self._decay, rise[0], rise[1], fall[0], fall[1], self._age,
            self._mean_sum, self._mean_count, self._run, LEVEL_CODES[self.level], codes, statistics, toward,
        )  # fmt: skip
        sides = ([(state[0], state[1])] if up else []) + ([(state[2], state[3])] if down else [])
        self._sums = [float(total) for total, _ in sides]
        self._minima = [float(lowest) for _, lowest in sides]
        self._age, self._mean_sum = int(state[4]), float(state[5])
        self._mean_count, self._run = int(state[6]), int(state[7])
        return self._events_from_codes(codes, statistics, {1: self._warning, 2: self._threshold}, toward)

    def _side_statistic(self, side: int) -> float:
        return float((self._sums[side] - self._minima[side]) * self._decay[self._age])

    # -- reading and snapshots ------------------------------------------------------------

    def _reading(self) -> Reading:
        statistic = max(self._side_statistic(i) for i in range(len(self._sides)))
        return Reading(statistic, self._threshold, None, self._warning)

    def _samples_to_test(self) -> int:
        return samples_to_test(self.level, self._run, self.min_samples)

    def _snapshot_state(self) -> dict[str, Any]:
        return {
            "sums": list(self._sums),
            "minima": list(self._minima),
            "age": self._age,
            "mean_sum": self._mean_sum,
            "mean_count": self._mean_count,
            "run": self._run,
        }

    def _restore_state(self, state: Mapping[str, Any]) -> None:
        self._sums = [float(value) for value in state["sums"]]
        self._minima = [float(value) for value in state["minima"]]
        self._age = int(state["age"])
        self._mean_sum = float(state["mean_sum"])
        self._mean_count = int(state["mean_count"])
        self._run = int(state["run"])
