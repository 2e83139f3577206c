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


@dataclass(frozen=True)
class DriftEvent:
    """A detector crossed into ``level`` at ``index`` within the batch it was given."""

    index: int
    level: Level


@dataclass(frozen=True)
class DetectorState:
    """A detector's current reading, as exported to metrics and ``GET /v1/detectors``."""

    statistic: float
    threshold: float
    p_value: float | None
    level: Level
    samples: int


@runtime_checkable
class Detector(Protocol):
    """One detector instance watching one signal."""

    def update(self, values: np.ndarray) -> list[DriftEvent]:
        """Consume a batch of values in order; return the events found in it."""
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


class DetectorStage:
    """Feeds each batch's signals to every configured detector."""

    def __init__(self, detectors: Sequence[WatchedDetector], metrics: Metrics) -> None:
        self.detectors = list(detectors)
        self._metrics = metrics
        self._missing_reported: set[str] = set()

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
        watched = []
        for spec in specs:
            reference = reference_signals.get(spec.signal)
            ref_array = None if reference is None else np.asarray(reference, dtype=np.float64)
            watched.append(WatchedDetector(spec, factory_for(spec.type)(spec, ref_array)))
        return cls(watched, metrics)

    def update(self, signals: Mapping[str, np.ndarray]) -> list[tuple[WatchedDetector, DriftEvent]]:
        """Run every detector over its signal from one batch; return all events raised."""
        raised = []
        for watched in self.detectors:
            values = signals.get(watched.spec.signal)
            if values is None:
                self._report_missing(watched.spec)
                continue
            if values.size == 0:
                continue
            for event in watched.detector.update(values):
                raised.append((watched, event))
                self._metrics.drift_events.labels(*self._labels(watched.spec), event.level).inc()
            self._export(watched)
        return raised

    def states(self) -> list[dict[str, Any]]:
        return [
            {"name": w.spec.label, "type": w.spec.type, "signal": w.spec.signal, **vars(w.detector.state)}
            for w in self.detectors
        ]

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
        return (spec.label, spec.type, spec.signal)

    def _report_missing(self, spec: DetectorSpec) -> None:
        if spec.label not in self._missing_reported:
            self._missing_reported.add(spec.label)
            log.warning(
                "detector %s watches signal %r, which the model does not produce; "
                "it will stay idle (check `signal` in its settings)",
                spec.label,
                spec.signal,
            )
