"""Scoring detectors on scenario streams: detection, delay and false alarms per scenario.

A stream is ``clean`` images drawn (seeded, with replacement) from the clean set, then
``drifted`` images drawn from the scenario's set. The detectors are built afresh for every
stream by the caller, exactly as the daemon builds them, and fed the stream's signals in
micro-batches through a ``DetectorStage``, the daemon's own path. A clean stream of the
same length, drawn from the clean set alone, counts each detector's false alarms.

Delays count drifted images seen up to and including the one the drift event fell on
(1 = the first drifted image). A miss counts as an endless delay, so a median or p90 is
None when more than half or a tenth of the streams missed: a percentile over the detected
streams alone would flatter a detector that mostly misses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from monitord.detectors import DetectorStage

from .drifts import DRIFT_KINDS
from .evaluation_images import ERROR_SIGNAL, Corruption, ImageSignals

#: Estimates accuracy from the signals of images whose labels it is not shown
#: (e.g. ``monitord_estimated_accuracy``'s estimator); fills ``estimated_accuracy``.
Estimator = Callable[[Mapping[str, np.ndarray]], float]


@dataclass(frozen=True)
class StreamPlan:
    """How many streams per scenario and how they are made."""

    streams: int = 20
    #: Clean images before the change (error detectors learn their normal rate from them).
    clean: int = 500
    drifted: int = 1000
    #: Images per detector update: the daemon's micro-batch.
    batch: int = 64
    seed: int = 0

    @property
    def length(self) -> int:
        return self.clean + self.drifted


@dataclass(frozen=True)
class Scenario:
    """Where a scenario's drifted images come from: a corrupted set, or (class mix) the clean
    set with a share of the images drawn from a few classes only."""

    corruption: Corruption
    images: ImageSignals
    #: Class mix: the rows of ``images`` the shifted share is drawn from; None for every row.
    favoured_rows: np.ndarray | None = None
    #: Class mix: the share of images drawn from ``favoured_rows``.
    share: float = 1.0

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        everything = rng.integers(0, self.images.rows, size=count)
        if self.favoured_rows is None:
            return everything
        favoured = self.favoured_rows[rng.integers(0, len(self.favoured_rows), size=count)]
        return np.where(rng.random(count) < self.share, favoured, everything)


@dataclass
class ScenarioRecord:
    """One detector on one scenario: what ``monitord evaluate`` prints and ``--json`` writes."""

    scenario: str
    kind: str
    #: Share of the kind's default amount; ``amount`` is in the kind's ``unit``.
    severity: float
    amount: float
    unit: str
    detector: str
    detector_type: str
    signal: str
    streams: int
    clean_images: int
    drifted_images: int
    #: Streams with a drift event at or after the change.
    detected: int
    detection_rate: float
    delay_median: float | None
    delay_p90: float | None
    #: Per stream: drifted images seen when it fired, None for a miss.
    delays: list[int | None]
    #: Drift events on the clean streams (``streams`` of ``clean + drifted`` images).
    false_alarms: int
    clean_stream_images: int
    false_alarms_per_1000: float
    #: True accuracy on the drifted images of all streams, and on the clean set.
    accuracy: float
    clean_accuracy: float
    #: Accuracy estimated without labels on the same images, when an estimator is given.
    estimated_accuracy: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    make_stage: Callable[[], DetectorStage],
    clean: ImageSignals,
    scenarios: Sequence[Scenario],
    plan: StreamPlan,
    estimate: Estimator | None = None,
    on_stream: Callable[[], None] | None = None,
) -> list[ScenarioRecord]:
    """One record per scenario and detector (scenario order, then the stage's detector order).

    ``make_stage`` builds the configured detectors afresh; ``on_stream`` is called after
    every stream (for a progress display).
    """
    false_alarms: dict[str, int] = {}
    for index in range(plan.streams):
        rows = np.random.default_rng([plan.seed, 0, index]).integers(0, clean.rows, size=plan.length)
        for label, drifts in _drift_indices(make_stage(), _take(clean, rows).signals, plan.batch).items():
            false_alarms[label] = false_alarms.get(label, 0) + len(drifts)
        if on_stream is not None:
            on_stream()
    records = []
    for number, scenario in enumerate(scenarios, start=1):
        delays: dict[str, list[int | None]] = {}
        detectors: dict[str, tuple[str, str]] = {}
        drifted_rows = []
        for index in range(plan.streams):
            rng = np.random.default_rng([plan.seed, number, index])
            before = rng.integers(0, clean.rows, size=plan.clean)
            after = scenario.draw(rng, plan.drifted)
            drifted_rows.append(after)
            stream = {name: np.concatenate([clean.signals[name][before], scenario.images.signals[name][after]])
                      for name in clean.signals if name in scenario.images.signals}
            stage = make_stage()
            detectors = {w.spec.label: (w.spec.type, w.spec.signal_label) for w in stage.detectors}
            found = _drift_indices(stage, stream, plan.batch, stop_from=plan.clean)
            for label in detectors:
                first = next((i for i in found.get(label, []) if i >= plan.clean), None)
                delays.setdefault(label, []).append(None if first is None else first - plan.clean + 1)
            if on_stream is not None:
                on_stream()
        drifted = _take(scenario.images, np.concatenate(drifted_rows))
        estimated = float(estimate(drifted.signals)) if estimate is not None else None
        kind = DRIFT_KINDS[scenario.corruption.kind]
        for label, (detector_type, signal) in detectors.items():
            found_delays = delays[label]
            detected = sum(delay is not None for delay in found_delays)
            alarms = false_alarms.get(label, 0)
            records.append(ScenarioRecord(
                scenario=scenario.corruption.name, kind=scenario.corruption.kind,
                severity=float(scenario.corruption.severity), amount=float(scenario.corruption.amount),
                unit=kind.unit, detector=label, detector_type=detector_type, signal=signal,
                streams=plan.streams, clean_images=plan.clean, drifted_images=plan.drifted,
                detected=detected, detection_rate=detected / plan.streams,
                delay_median=_percentile(found_delays, 50), delay_p90=_percentile(found_delays, 90),
                delays=found_delays, false_alarms=alarms, clean_stream_images=plan.streams * plan.length,
                false_alarms_per_1000=1000.0 * alarms / (plan.streams * plan.length),
                accuracy=drifted.accuracy, clean_accuracy=clean.accuracy, estimated_accuracy=estimated,
            ))
    return records


def _take(images: ImageSignals, rows: np.ndarray) -> ImageSignals:
    return ImageSignals({name: values[rows] for name, values in images.signals.items()}, images.labels[rows])


def _drift_indices(stage: DetectorStage, stream: Mapping[str, np.ndarray], batch: int,
                   stop_from: int | None = None) -> dict[str, list[int]]:
    """Each detector's drift events, as indices into the stream, fed ``batch`` at a time.

    A detector is fed no further once it drifted at or after ``stop_from`` (the change):
    its delay is known, and what it does after a restart on drifted data (re-learning, for
    an error detector a new calibration) would cost time and change nothing reported.
    """
    length = len(stream[ERROR_SIGNAL])
    found: dict[str, list[int]] = {w.spec.label: [] for w in stage.detectors}
    watching = list(stage.detectors)
    try:
        for start in range(0, length, batch):
            chunk = {name: values[start:start + batch] for name, values in stream.items()}
            for watched, event in stage.update(chunk):
                if event.level == "drift":
                    found[watched.spec.label].append(start + event.index)
                    if stop_from is not None and start + event.index >= stop_from and watched in stage.detectors:
                        stage.detectors.remove(watched)
            if not stage.detectors:
                break
    finally:
        for watched in watching:
            close = getattr(watched.detector, "close", None)
            if callable(close):
                close()
    return found


def _percentile(delays: Sequence[int | None], q: float) -> float | None:
    """The ``q``-th percentile with misses as endless delays (the smallest delay within which
    at least q % of the streams detected); None when that is endless."""
    values = np.array([np.inf if delay is None else delay for delay in delays], dtype=np.float64)
    value = float(np.percentile(values, q, method="inverted_cdf"))
    return None if not np.isfinite(value) else value
