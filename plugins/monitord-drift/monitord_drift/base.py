"""What every detector of this package shares: reference, levels, events and snapshots.

A subclass implements one statistic. The base class turns the stream it is fed into a
reference sample (when the daemon has none from the model: the first ``reference_size``
values) followed by monitored samples, drops non-finite values, turns rises of the level
into :class:`~monitord.detectors.DriftEvent` with the statistic at that moment, and frames
snapshots so that ``restore`` refuses data taken from another type, version or
parameter set instead of silently mixing them.

Writing a subclass:

- store every constructor parameter under an attribute of the same name *before* calling
  ``super().__init__`` (snapshots record them, and a given reference is fitted at once);
- implement ``_fit_reference``, ``_update``, ``_reading``, ``_snapshot_state`` and
  ``_restore_state``, and ``_samples_to_test`` when the test needs more than a reference
  (a full window, a minimum number of samples) before it first runs;
- raise :class:`SampleError` for a value the detector cannot take;
- keep ``self.level`` current (``"ok"``, ``"warning"``, ``"drift"``); :func:`level_rises`
  finds the events in a vectorised batch of level codes.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
from typing import Any, ClassVar, Mapping, NamedTuple

import numpy as np
from monitord.detectors import DetectorState, DriftEvent, Level
from monitord.settings import DetectorSpec
from numpy.typing import ArrayLike

#: Level names by code, the value ``monitord_drift_level`` exports.
LEVELS: tuple[Level, Level, Level] = ("ok", "warning", "drift")
LEVEL_CODES: dict[str, int] = {name: code for code, name in enumerate(LEVELS)}


class SampleError(ValueError):
    """A value the detector cannot take; ``index`` is its row in the batch given to ``update``.

    The message says what is wrong with the value, not where it is: ``monitord replay``
    adds the line, the daemon's log the detector and signal.
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class Reading(NamedTuple):
    """A detector's statistic and the thresholds it is compared with, right now."""

    statistic: float
    threshold: float
    p_value: float | None = None
    warning_threshold: float | None = None


def level_rises(previous: Level, codes: np.ndarray) -> np.ndarray:
    """Indices at which the level code (0 ok, 1 warning, 2 drift) goes up.

    ``previous`` is the level before ``codes[0]``. ok → drift is one rise (one drift
    event), not two.
    """
    codes = np.asarray(codes)
    if codes.size == 0:
        return np.empty(0, dtype=np.intp)
    before = np.empty_like(codes)
    before[0] = LEVEL_CODES[previous]
    before[1:] = codes[:-1]
    return np.flatnonzero(codes > before)


class DriftDetector(abc.ABC):
    """Base class of monitord's drift detectors (see the module docstring)."""

    #: The ``type`` of this detector in the settings.
    type_name: ClassVar[str]
    #: Signals per sample: 1 for a univariate detector, ``None`` for any number.
    signals_per_sample: ClassVar[int | None] = 1
    #: Whether the detector compares the stream against a reference sample.
    needs_reference: ClassVar[bool] = True
    #: Bumped whenever the snapshot layout changes; other versions are refused.
    snapshot_version: ClassVar[int] = 1

    def __init__(self, *, reference: ArrayLike | None = None, reference_size: int = 500) -> None:
        if self.needs_reference and (not isinstance(reference_size, int) or reference_size < 2):
            raise ValueError(f"reference_size must be an integer of at least 2, got {reference_size!r}")
        self.reference_size = reference_size
        self.samples = 0
        self.level: Level = "ok"
        self.reference: np.ndarray | None = None
        self._warmup: list[np.ndarray] = []
        self._warmup_count = 0
        if self.needs_reference and reference is not None:
            given = self._as_samples(reference)
            given = given[self._finite_rows(given)]
            if len(given) < 2:
                raise ValueError(f"the reference holds {len(given)} finite values; at least 2 are needed")
            self._adopt_reference(given[:reference_size])

    # -- the contract monitord relies on ---------------------------------------------------

    def update(self, values: ArrayLike) -> list[DriftEvent]:
        """Consume a batch in order; return the level rises in it, indexed into ``values``.

        Non-finite values (NaN, ±inf) are skipped: they carry no evidence either way.
        """
        batch = self._as_samples(values)
        finite = self._finite_rows(batch)
        positions = None if finite.all() else np.flatnonzero(finite)
        if positions is not None:
            batch = batch[finite]
        start = 0
        if self.needs_reference and self.reference is None:
            start = self._collect_reference(batch)
        try:
            events = self._update(batch[start:]) if start < len(batch) else []
        except SampleError as error:
            index = error.index + start
            raise SampleError(str(error), index if positions is None else int(positions[index])) from None
        self.samples += len(batch)
        shifted = []
        for event in events:
            index = event.index + start
            if positions is not None:
                index = int(positions[index])
            shifted.append(dataclasses.replace(event, index=index))
        return shifted

    @property
    def samples_needed(self) -> int:
        """Samples still to come before the test can run: the rest of a reference taken
        from the stream, then what the test itself needs (0 once it has run)."""
        if self.needs_reference and self.reference is None:
            return self.reference_size - self._warmup_count + self._samples_to_test()
        return self._samples_to_test()

    @property
    def state(self) -> DetectorState:
        reading = self._reading()
        needed = self.samples_needed
        ready = needed == 0
        return DetectorState(
            statistic=float(reading.statistic) if ready else math.nan,
            threshold=float(reading.threshold),
            p_value=None if reading.p_value is None or not ready else float(reading.p_value),
            level=self.level,
            samples=self.samples,
            warning_threshold=None if reading.warning_threshold is None else float(reading.warning_threshold),
            reference_samples=None if not self.needs_reference else (
                0 if self.reference is None else len(self.reference)
            ),
            ready=ready,
            samples_needed=needed,
            # Detectors with an ``ert`` parameter report the run length they were calibrated to.
            ert=getattr(self, "ert", None),
        )

    def params(self) -> dict[str, Any]:
        """The constructor parameters this instance was built with (JSON-able)."""
        return {name: _plain(getattr(self, name)) for name in parameter_names(type(self))}

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data from which ``restore`` rebuilds this detector exactly."""
        warmup = np.concatenate(self._warmup) if self._warmup else np.empty(0)
        return {
            "type": self.type_name,
            "version": self.snapshot_version,
            "params": self.params(),
            "samples": self.samples,
            "level": self.level,
            "reference": None if self.reference is None else self.reference.tolist(),
            "warmup": warmup.tolist(),
            "state": self._snapshot_state(),
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Continue from ``snapshot``, refusing one from another type, version or parameter set."""
        if snapshot.get("type") != self.type_name or snapshot.get("version") != self.snapshot_version:
            raise ValueError(
                f"snapshot of {snapshot.get('type')!r} version {snapshot.get('version')!r} cannot restore "
                f"a {self.type_name!r} detector (snapshot version {self.snapshot_version})"
            )
        if snapshot.get("params") != self.params():
            raise ValueError(
                f"snapshot was taken with parameters {snapshot.get('params')}, this detector has "
                f"{self.params()}; its state does not apply"
            )
        self.reference = None
        self._warmup, self._warmup_count = [], 0
        if snapshot["reference"] is not None:
            self._adopt_reference(self._as_samples(snapshot["reference"]))
        warmup = self._as_samples(snapshot["warmup"]) if snapshot["warmup"] else None
        if warmup is not None and len(warmup):
            self._warmup, self._warmup_count = [warmup], len(warmup)
        self.samples = int(snapshot["samples"])
        self.level = snapshot["level"]
        self._restore_state(snapshot["state"])

    # -- what subclasses implement ---------------------------------------------------------

    @abc.abstractmethod
    def _fit_reference(self, reference: np.ndarray) -> None:
        """Prepare the monitoring state for this reference (also called by ``restore``)."""

    @abc.abstractmethod
    def _update(self, values: np.ndarray) -> list[DriftEvent]:
        """Monitor finite values (reference already set); events indexed into ``values``."""

    @abc.abstractmethod
    def _reading(self) -> Reading:
        """The statistic and thresholds now."""

    @abc.abstractmethod
    def _snapshot_state(self) -> dict[str, Any]:
        """JSON-able monitoring state beyond the reference (window contents, sums...)."""

    @abc.abstractmethod
    def _restore_state(self, state: Mapping[str, Any]) -> None:
        """Rebuild the monitoring state written by ``_snapshot_state``."""

    def _samples_to_test(self) -> int:
        """Samples the test needs beyond a reference before it first runs; 0 once it has.

        With no reference yet, what it will need once it has one.
        """
        return 0

    # -- helpers ----------------------------------------------------------------------------

    def _events_from_codes(
        self,
        codes: np.ndarray,
        statistics: np.ndarray,
        thresholds: Mapping[int, np.ndarray | float],
        toward: np.ndarray | None = None,
    ) -> list[DriftEvent]:
        """Events for the rises in ``codes``; sets ``self.level`` to the last code.

        ``thresholds`` maps a level code (1, 2) to the threshold crossed (scalar or per sample);
        ``toward``, per sample, whether a change there moves back toward the reference.
        """
        if len(codes) == 0:
            return []
        events = []
        for index in level_rises(self.level, codes):
            code = int(codes[index])
            threshold = thresholds[code]
            threshold = float(threshold[index]) if isinstance(threshold, np.ndarray) else float(threshold)
            back = None if toward is None else bool(toward[index])
            events.append(DriftEvent(int(index), LEVELS[code], float(statistics[index]), threshold, back))
        self.level = LEVELS[int(codes[-1])]
        return events

    def _as_samples(self, values: ArrayLike) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if self.signals_per_sample == 1:
            if array.ndim == 2 and array.shape[1] == 1:
                array = array[:, 0]
            if array.ndim != 1:
                raise ValueError(f"{self.type_name} watches one signal; got values of shape {array.shape}")
            return array
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise ValueError(f"{self.type_name} takes a 2-D array (samples, signals); got shape {array.shape}")
        expected = self.reference.shape[1] if self.reference is not None else self.signals_per_sample
        if expected is not None and array.shape[0] and array.shape[1] != expected:
            raise ValueError(f"{self.type_name} expects {expected} signals per sample; got {array.shape[1]}")
        return array

    @staticmethod
    def _finite_rows(array: np.ndarray) -> np.ndarray:
        finite = np.isfinite(array)
        return finite if finite.ndim == 1 else finite.all(axis=1)

    def _collect_reference(self, batch: np.ndarray) -> int:
        """Take values from the front of ``batch`` into the reference; return how many."""
        take = min(self.reference_size - self._warmup_count, len(batch))
        if take:
            self._warmup.append(batch[:take].copy())
            self._warmup_count += take
        if self._warmup_count >= self.reference_size:
            reference = np.concatenate(self._warmup)
            self._warmup, self._warmup_count = [], 0
            self._adopt_reference(reference)
        return take

    def _adopt_reference(self, reference: np.ndarray) -> None:
        self.reference = np.array(reference, dtype=np.float64)
        self._fit_reference(self.reference)


def parameter_names(cls: type[DriftDetector]) -> list[str]:
    """The settings a detector type takes: its constructor's keyword parameters."""
    signature = inspect.signature(cls.__init__)
    return [
        name
        for name, parameter in signature.parameters.items()
        if name not in ("self", "reference") and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]


def build_detector(cls: type[DriftDetector], spec: DetectorSpec, reference: np.ndarray | None) -> DriftDetector:
    """Instantiate ``cls`` from a ``[[detectors]]`` entry, with errors that name the entry."""
    where = f"detector {spec.label!r} (type {spec.type})"
    params = spec.params()
    accepted = parameter_names(cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {', '.join(unknown)}; {spec.type} takes {', '.join(accepted)}")
    count = len(spec.signals)
    if cls.signals_per_sample is not None and count != cls.signals_per_sample:
        raise ValueError(
            f"{where} watches {cls.signals_per_sample} signal(s), got {count} ({', '.join(spec.signals)})"
        )
    try:
        return cls(**params, reference=reference if cls.needs_reference else None)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
