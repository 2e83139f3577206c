"""What the core expects of a drift detector, and the stage that feeds detectors.

Detector types come from plugins (``register_detectors``); the ``detectors`` setting
lists instances, each watching one signal by name. The stage hands every detector the
whole batch of its signal at once, and mirrors each detector's state into the
``monitord_drift_*`` metrics after every batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from monitord.metrics import Metrics
from monitord.settings import DetectorSpec

log = logging.getLogger("monitord.detectors")

Level = Literal["ok", "warning", "drift"]
LEVEL_VALUES: dict[str, int] = {"ok": 0, "warning": 1, "drift": 2}
#: The levels a ``DriftEvent`` can have: the ``level`` label of ``monitord_drift_events_total``.
EVENT_LEVELS: tuple[Level, ...] = ("warning", "drift")


@dataclass(frozen=True)
class DriftEvent:
    """A detector crossed into ``level`` at ``index`` within the batch it was given.

    ``statistic`` and ``threshold`` are the values at that sample (the threshold of the
    level crossed), for alerts and for ``monitord replay``. ``toward_reference`` says
    whether the change moves the signal back toward the detector's reference (True: a
    return to normal after a drift, which must not open a new alert episode), away from
    it (False), or that the detector cannot tell (None).
    """

    index: int
    level: Level
    statistic: float | None = None
    threshold: float | None = None
    toward_reference: bool | None = None


@dataclass(frozen=True)
class DetectorState:
    """A detector's current reading, as exported to metrics and ``GET /v1/detectors``.

    A detector that is not ``ready`` cannot decide yet (its reference, its window or its
    minimum samples are incomplete): its level is ``ok`` by default, not by a test, and its
    ``statistic`` is NaN and ``p_value`` None, since a statistic of a few values compared
    with the threshold of a full test means nothing (NaN is ``null`` in JSON).
    """

    statistic: float
    threshold: float
    p_value: float | None
    level: Level
    samples: int
    #: The statistic's warning threshold, for detectors that have one.
    warning_threshold: float | None = None
    #: Size of the reference sample; 0 while it is still being collected from the
    #: stream, None for detectors without a reference.
    reference_samples: int | None = None
    #: Whether the detector's test has what it needs to run.
    ready: bool = True
    #: Samples still needed before it is ready (0 when ready); EDDM counts errors.
    samples_needed: int = 0
    #: The expected run time between false alarms (samples of data like the reference) its
    #: thresholds were calibrated to; None for detectors set by a level or a raw threshold.
    ert: float | None = None


@runtime_checkable
class Detector(Protocol):
    """One detector instance watching one signal."""

    def update(self, values: np.ndarray) -> list[DriftEvent]:
        """Consume a batch in order; return the events found in it.

        ``values`` has shape (N,) for a detector watching one signal, (N, d) for one
        watching d signals (columns in the order of its ``signal`` setting). A value it
        cannot take raises ``ValueError``; an ``index`` attribute on the error, where
        present, is that value's row in ``values`` (``monitord replay`` turns it into a
        line number).
        """
        ...

    @property
    def state(self) -> DetectorState: ...

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able data from which ``restore`` rebuilds this detector."""
        ...

    def restore(self, snapshot: Mapping[str, Any]) -> None: ...


@dataclass
class WatchedDetector:
    spec: DetectorSpec
    detector: Detector
    #: Whether it was given the model's saved reference (``model``) or collects one from the
    #: stream (``stream``); shown by ``GET /v1/detectors`` for detectors that have a reference.
    reference: Literal["model", "stream"] = "stream"


class DetectorStage:
    """Feeds signals to every configured detector and mirrors their state into metrics.

    Model batches arrive from the pipeline; the ``error`` signal (1 for a wrong
    prediction, 0 for a right one) arrives whenever a label does, from a folder label or
    from ``POST /v1/feedback``. Both run on the event loop, so detectors need no locks.
    """

    def __init__(
        self,
        detectors: Sequence[WatchedDetector],
        metrics: Metrics,
        make: Callable[[DetectorSpec], Detector] | None = None,
    ) -> None:
        self.detectors = list(detectors)
        self._metrics = metrics
        self._make = make
        self._missing_reported: set[str] = set()
        self._failure_reported: set[str] = set()
        #: Called after every update with each detector that took values and its events
        #: (possibly none), e.g. the alert state machines.
        self.listeners: list[Callable[[list[tuple[WatchedDetector, list[DriftEvent]]]], None]] = []
        for watched in self.detectors:
            self._declare(watched.spec)
            self._export(watched)

    @classmethod
    def build(
        cls,
        specs: Sequence[DetectorSpec],
        factory_for: Callable[[str], Callable[..., Detector]],
        reference_signals: Mapping[str, Sequence[float]],
        metrics: Metrics,
    ) -> "DetectorStage":
        """Instantiate the configured detectors; a bad spec fails here, at start-up."""
        names = [spec.label for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"detector names must be unique; repeated: {', '.join(duplicates)} (set `name`)")

        def make(spec: DetectorSpec) -> Detector:
            return factory_for(spec.type)(spec, model_reference(spec, reference_signals))

        watched = []
        for spec in specs:
            saved = model_reference(spec, reference_signals) is not None
            if not saved and spec.signals != [ERROR_SIGNAL]:
                log.info("detector %s takes its reference from the first samples of the stream", spec.label)
            watched.append(WatchedDetector(spec, make(spec), "model" if saved else "stream"))
        return cls(watched, metrics, make)

    def rebuild(self, watched: WatchedDetector) -> None:
        """Replace a detector with a fresh instance of its spec (a refused restore may have
        left it half-restored)."""
        if self._make is None:
            raise RuntimeError("this stage was not built from specs; it cannot rebuild a detector")
        watched.detector = self._make(watched.spec)
        self.refresh(watched)

    def refresh(self, watched: WatchedDetector) -> None:
        """Mirror a detector's state into the metrics after it changed outside ``update``."""
        self._export(watched)

    def update(
        self, signals: Mapping[str, np.ndarray], *, from_model: bool = True
    ) -> list[tuple[WatchedDetector, DriftEvent]]:
        """Run every detector whose signals are all in ``signals``; return the events raised.

        ``from_model`` says ``signals`` is a model batch, where a missing signal (other
        than ``error``) is a configuration mistake worth a warning.
        """
        raised = []
        updated: list[tuple[WatchedDetector, list[DriftEvent]]] = []
        for watched in self.detectors:
            values = self._values(watched.spec, signals, from_model)
            if values is None or len(values) == 0:
                continue
            try:
                events = watched.detector.update(values)
            except Exception as error:  # one broken detector must not stop the pipeline
                self._report_failure(watched.spec, error)
                continue
            for event in events:
                raised.append((watched, event))
                self._metrics.drift_events.labels(*self._labels(watched.spec), event.level).inc()
            self._export(watched)
            updated.append((watched, list(events)))
        if updated:
            for listener in self.listeners:
                try:
                    listener(updated)
                except Exception:  # alerting must not stop the pipeline either
                    log.exception("a detector listener failed")
        return raised

    def states(self) -> list[dict[str, Any]]:
        """Each detector's reading; ``reference`` says where its reference comes from (None for
        detectors that have none, such as those watching the error rate)."""
        states = []
        for w in self.detectors:
            state = w.detector.state
            reference = None if state.reference_samples is None else w.reference
            states.append({"name": w.spec.label, "type": w.spec.type, "signal": w.spec.signal_label,
                           "reference": reference, **vars(state)})
        return states

    def _values(self, spec: DetectorSpec, signals: Mapping[str, np.ndarray], from_model: bool) -> np.ndarray | None:
        columns = [signals.get(name) for name in spec.signals]
        if any(column is None for column in columns):
            missing = [name for name, column in zip(spec.signals, columns) if column is None]
            if from_model and ERROR_SIGNAL not in missing:
                self._report_missing(spec, missing)
            return None
        if len(columns) == 1:
            return np.asarray(columns[0], dtype=np.float64)
        return np.column_stack(columns).astype(np.float64, copy=False)

    def _declare(self, spec: DetectorSpec) -> None:
        """Create the detector's counter series at 0: one that first appears at 1 hides its
        first event from ``increase()`` and ``rate()`` (the rules, the dashboard)."""
        labels = self._labels(spec)
        for level in EVENT_LEVELS:
            self._metrics.drift_events.labels(*labels, level)
        self._metrics.detector_errors.labels(*labels)

    def _export(self, watched: WatchedDetector) -> None:
        state = watched.detector.state
        labels = self._labels(watched.spec)
        self._metrics.drift_statistic.labels(*labels).set(state.statistic)
        self._metrics.drift_threshold.labels(*labels).set(state.threshold)
        self._metrics.drift_level.labels(*labels).set(LEVEL_VALUES[state.level])
        if state.p_value is not None:
            self._metrics.drift_p_value.labels(*labels).set(state.p_value)

    @staticmethod
    def _labels(spec: DetectorSpec) -> tuple[str, str, str]:
        return (spec.label, spec.type, spec.signal_label)

    def _report_failure(self, spec: DetectorSpec, error: Exception) -> None:
        self._metrics.detector_errors.labels(*self._labels(spec)).inc()
        if spec.label not in self._failure_reported:
            self._failure_reported.add(spec.label)
            log.error(
                "detector %s failed on a batch of %s and skipped it: %s: %s "
                "(later failures are counted in monitord_detector_errors_total)",
                spec.label, spec.signal_label, type(error).__name__, error,
            )

    def _report_missing(self, spec: DetectorSpec, missing: list[str]) -> None:
        if spec.label not in self._missing_reported:
            self._missing_reported.add(spec.label)
            log.warning(
                "detector %s watches %s, which the model does not produce; "
                "it will stay idle (check `signal` in its settings)",
                spec.label,
                ", ".join(missing),
            )


#: The signal labels produce: 1 for a wrong prediction, 0 for a right one.
ERROR_SIGNAL = "error"


def model_reference(spec: DetectorSpec, reference_signals: Mapping[str, Sequence[float]]) -> np.ndarray | None:
    """The model's saved reference for the spec's signals: (n,) for one, (n, d) for several.

    None (the detector then collects its reference from the stream) when the spec asks
    for ``reference = "stream"`` or the model saved no reference for one of the signals.
    """
    if spec.reference == "stream":
        return None
    columns = [reference_signals.get(name) for name in spec.signals]
    if any(column is None or len(column) == 0 for column in columns):
        return None
    if len({len(column) for column in columns}) != 1:
        return None
    if len(columns) == 1:
        return np.asarray(columns[0], dtype=np.float64)
    return np.column_stack([np.asarray(column, dtype=np.float64) for column in columns])
