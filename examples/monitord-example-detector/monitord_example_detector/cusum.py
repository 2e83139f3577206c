"""A two-sided CUSUM on values standardised against a reference: an example detector plugin.

It implements ``monitord.detectors.Detector`` directly (no base class from monitord-drift),
as any third-party detector may: ``update``, ``state``, ``snapshot`` and ``restore``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np
from monitord.detectors import DetectorState, DriftEvent, Level
from numpy.typing import ArrayLike

from .parameters import CusumParameters

log = logging.getLogger("monitord.example_detector")

#: Level codes: the order in which levels rise (an event is a rise).
_CODES: dict[str, int] = {"ok": 0, "warning": 1, "drift": 2}
#: A reference whose standard deviation is below this fraction of its magnitude has no
#: spread to standardise with.
_NO_SPREAD = 1e-9


class BadValue(ValueError):
    """A value the detector cannot take; ``index`` is its row in the batch given to ``update``."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class Cusum:
    r"""Two-sided CUSUM for a shift of the mean, in units of the reference's spread.

    Each value is standardised against the reference, $z_t = (x_t - \mu_R) / \sigma_R$,
    and two one-sided sums collect evidence of a rise and of a fall:

    $$S^+_t = \min(c,\ \max(0,\ S^+_{t-1} + z_t - k)), \qquad
      S^-_t = \min(c,\ \max(0,\ S^-_{t-1} - z_t - k)), \qquad S^\pm_0 = 0$$

    The statistic is $\max(S^+_t, S^-_t)$: ``drift`` above ``threshold``, ``warning``
    above ``warning_threshold``, ``ok`` otherwise. A level is held until the evidence that
    raised it is gone: ``drift`` until the statistic falls to ``warning_threshold``,
    ``warning`` until it falls to 0, so noise around a threshold raises no second event.
    An event is emitted only where the level rises (ok →
    warning, ok → drift, warning → drift), never while it stays or falls. The sums are capped at $c$ = twice the threshold, so the level stays at
    ``drift`` for as long as the shift lasts and falls back within about
    $(c - \text{warning\_threshold}) / k$ samples once the stream is back at the
    reference's mean. Every change it reports points away from the reference (the sums
    measure the distance from the reference's mean), so each event has
    ``toward_reference=False``.

    The reference is the model's saved reference for the watched signal when the daemon
    passes one, else the first ``reference_size`` values of the stream; until it is
    complete the detector is not ``ready`` and its statistic is NaN. A reference without
    spread (a constant) gives no unit: values are then taken in raw units ($\sigma_R = 1$).

    Parameters
    ----------
    slack
        $k$, in reference standard deviations: shifts smaller than this are absorbed;
        detection is fastest for shifts around ``2 * slack``.
    threshold
        Drift threshold on the statistic, in reference standard deviations.
    warning_threshold
        Warning threshold, below ``threshold``; None (default) is three quarters of it.
    reference_size
        Values taken from the start of the stream as the reference when the model has none.
    reference
        The model's saved reference values of the watched signal, or None.

    Examples
    --------
    >>> import numpy as np
    >>> from monitord_example_detector.cusum import Cusum

    >>> rng = np.random.default_rng(7)
    >>> detector = Cusum(reference=rng.normal(0.0, 1.0, 1000))
    >>> detector.update(rng.normal(0.0, 1.0, 2000))
    []

    The mean moves up by one reference standard deviation:

    >>> for event in detector.update(rng.normal(1.0, 1.0, 200)):
    ...     print(event.index, event.level, round(event.statistic, 2), event.threshold)
    14 warning 11.49 11.25
    26 drift 16.08 15.0
    >>> detector.state.level, detector.state.samples
    ('drift', 2200)

    References
    ----------
    [^1]: E. S. Page. 1954. Continuous Inspection Schemes. Biometrika 41(1/2), 100-115.
    [^2]: D. C. Montgomery. 2009. Introduction to Statistical Quality Control, 6th ed.,
          section 9.1 (the tabular CUSUM).
    """

    #: The ``type`` of this detector in the settings.
    type_name = "cusum"
    #: Bumped whenever the snapshot layout changes; snapshots of other versions are refused.
    snapshot_version = 1

    def __init__(
        self,
        slack: float = 0.5,
        threshold: float = 15.0,
        warning_threshold: float | None = None,
        reference_size: int = 500,
        reference: ArrayLike | None = None,
    ) -> None:
        self.parameters = CusumParameters.parse(
            {"slack": slack, "threshold": threshold, "warning_threshold": warning_threshold,
             "reference_size": reference_size}
        )
        self._warning = self.parameters.warning_level()
        self._ceiling = 2.0 * self.parameters.threshold
        self.samples = 0
        self.level: Level = "ok"
        self._up = 0.0
        self._down = 0.0
        self._mean: float | None = None
        self._std: float | None = None
        self._reference_samples = 0
        self._warmup: list[float] = []
        if reference is not None:
            values = np.asarray(reference, dtype=np.float64).reshape(-1)
            values = values[np.isfinite(values)]
            if len(values) < 2:
                raise ValueError(f"the model's reference holds {len(values)} finite values; at least 2 are needed")
            self._fit_reference(values)

    # -- the contract monitord relies on ---------------------------------------------------

    def update(self, values: ArrayLike) -> list[DriftEvent]:
        """Consume a batch in order; return the level rises in it, indexed into ``values``.

        The whole batch is checked before any of it is applied, so a refused batch leaves
        the detector as it was.
        """
        batch = self._as_column(values)
        bad = np.flatnonzero(~np.isfinite(batch))
        if len(bad):
            index = int(bad[0])
            raise BadValue(f"{batch[index]} is not a finite number; a CUSUM needs real values", index)
        events: list[DriftEvent] = []
        for index, value in enumerate(batch.tolist()):
            self.samples += 1
            if self._mean is None:
                self._collect_reference(value)
                continue
            event = self._step(index, value)
            if event is not None:
                events.append(event)
        return events

    @property
    def state(self) -> DetectorState:
        ready = self._mean is not None
        return DetectorState(
            statistic=max(self._up, self._down) if ready else math.nan,
            threshold=self.parameters.threshold,
            p_value=None,
            level=self.level,
            samples=self.samples,
            warning_threshold=self._warning,
            reference_samples=self._reference_samples,
            ready=ready,
            samples_needed=0 if ready else self.parameters.reference_size - len(self._warmup),
        )

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data from which ``restore`` continues exactly where this left off."""
        return {
            "type": self.type_name,
            "version": self.snapshot_version,
            "parameters": self.parameters.model_dump(),
            "samples": self.samples,
            "level": self.level,
            "sums": [self._up, self._down],
            "reference": None if self._mean is None else {
                "mean": self._mean, "std": self._std, "samples": self._reference_samples,
            },
            "warmup": list(self._warmup),
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Continue from ``snapshot``; raise ``ValueError`` for one that does not fit.

        Everything is checked before anything changes. On ``ValueError`` the daemon logs
        the reason and starts this detector fresh.
        """
        if snapshot.get("type") != self.type_name or snapshot.get("version") != self.snapshot_version:
            raise ValueError(
                f"snapshot of {snapshot.get('type')!r} version {snapshot.get('version')!r} cannot restore "
                f"a {self.type_name!r} detector (snapshot version {self.snapshot_version})"
            )
        if snapshot.get("parameters") != self.parameters.model_dump():
            raise ValueError(
                f"snapshot was taken with parameters {snapshot.get('parameters')}, this detector has "
                f"{self.parameters.model_dump()}; its sums do not apply"
            )
        try:
            level = snapshot["level"]
            if level not in _CODES:
                raise ValueError(f"level {level!r}")
            up, down = (float(value) for value in snapshot["sums"])
            samples = int(snapshot["samples"])
            warmup = [float(value) for value in snapshot["warmup"]]
            reference = snapshot["reference"]
            if reference is not None:
                mean, std, size = float(reference["mean"]), float(reference["std"]), int(reference["samples"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"the snapshot is malformed ({type(error).__name__}: {error})") from None
        self.level = level
        self._up, self._down = up, down
        self.samples = samples
        self._warmup = warmup
        if reference is None:
            self._mean = self._std = None
            self._reference_samples = 0
        else:
            self._mean, self._std, self._reference_samples = mean, std, size

    # -- the statistic ---------------------------------------------------------------------

    def _step(self, index: int, value: float) -> DriftEvent | None:
        assert self._mean is not None and self._std is not None
        z = (value - self._mean) / self._std
        slack = self.parameters.slack
        self._up = min(self._ceiling, max(0.0, self._up + z - slack))
        self._down = min(self._ceiling, max(0.0, self._down - z - slack))
        statistic = max(self._up, self._down)
        level: Level = "ok"
        if statistic > self.parameters.threshold or (self.level == "drift" and statistic > self._warning):
            level = "drift"
        elif statistic > self._warning or (self.level != "ok" and statistic > 0.0):
            level = "warning"
        rose = _CODES[level] > _CODES[self.level]
        self.level = level
        if not rose:
            return None
        threshold = self.parameters.threshold if level == "drift" else self._warning
        return DriftEvent(index, level, statistic, threshold, toward_reference=False)

    def _collect_reference(self, value: float) -> None:
        self._warmup.append(value)
        if len(self._warmup) >= self.parameters.reference_size:
            reference = np.asarray(self._warmup)
            self._warmup = []
            self._fit_reference(reference)

    def _fit_reference(self, reference: np.ndarray) -> None:
        mean = float(reference.mean())
        std = float(reference.std(ddof=1))
        if not std > _NO_SPREAD * max(1.0, abs(mean)):
            log.warning("the reference of a cusum detector has no spread (std %g); values are taken in raw units", std)
            std = 1.0
        self._mean, self._std, self._reference_samples = mean, std, len(reference)

    def _as_column(self, values: ArrayLike) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"cusum watches one signal: values of shape (N,), got {array.shape}")
        return array
