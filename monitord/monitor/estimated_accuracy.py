"""Accuracy without labels: difference of confidences (DoC) over the latest predictions.

The model's mean top-1 confidence moves with its accuracy under most input changes; its
gap to the accuracy is measured once, on the labelled reference images. The estimate over
a window of the most recent predictions is therefore

    reference accuracy − (reference mean confidence − window mean confidence)

(Guillory et al., 2021, "Predicting with Confidence on Unseen Distributions"). Chosen by
measurement over the mean of isotonic-calibrated confidences (CBPE, as NannyML does it) and
ATC: see benchmarks/RESULTS.md, "Estimated accuracy (issue 18)". It needs only the
reference's accuracy and its ``confidence`` signal, no fitted map.

No confidence-based estimate sees a shift the model is confidently wrong on (inverted or
strongly rotated images), so the estimate is marked unreliable while any detector on the
model's inputs (any detector not on the ``error`` signal) is at drift, and until a whole
window of predictions came after its last drift event (detectors that restart after a
detection, such as Page-Hinkley, are back at ``ok`` on their next batch).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monitord.detectors import ERROR_SIGNAL, DetectorStage, DriftEvent, WatchedDetector
from monitord.metrics import Metrics

log = logging.getLogger("monitord.monitor")

CONFIDENCE_SIGNAL = "confidence"
HOW_TO_GET_ONE = ("build the reference from labelled images (one folder per class) with `monitord reference DIR` "
                  "or `monitord train`")


class AccuracyEstimate:
    """The DoC estimate over a sliding window of the latest ``window`` confidences.

    ``value`` is NaN until the window is full: a half-full window would read as settled
    while it still mixes in whatever came before.
    """

    def __init__(self, reference_accuracy: float, reference_confidence: float, window: int) -> None:
        if window < 1:
            raise ValueError(f"the estimated-accuracy window must be at least 1 prediction, not {window}")
        self.reference_accuracy = float(reference_accuracy)
        self.reference_confidence = float(reference_confidence)
        self.window = int(window)
        self._values = np.zeros(self.window, dtype=np.float64)
        self._next = 0
        self._filled = 0

    @classmethod
    def from_reference(cls, reference_accuracy: float | None, reference_confidences: Sequence[float] | None,
                       window: int) -> AccuracyEstimate:
        """The estimate for a reference; ``ValueError`` saying what is missing when it cannot give one."""
        if reference_accuracy is None:
            raise ValueError("the reference has no accuracy (there is no reference folder, or its images had no "
                             f"labels); {HOW_TO_GET_ONE}")
        if reference_confidences is None or len(reference_confidences) == 0:
            raise ValueError(f"the reference has no values of the {CONFIDENCE_SIGNAL!r} signal; {HOW_TO_GET_ONE}")
        confidences = np.asarray(reference_confidences, dtype=np.float64)
        return cls(float(reference_accuracy), float(confidences.mean()), window)

    def observe(self, confidences: np.ndarray) -> None:
        """Add a batch of top-1 confidences, in arrival order."""
        values = np.asarray(confidences, dtype=np.float64)[-self.window:]
        n = len(values)
        if n == 0:
            return
        end = self._next + n
        if end <= self.window:
            self._values[self._next:end] = values
        else:
            split = self.window - self._next
            self._values[self._next:] = values[:split]
            self._values[:n - split] = values[split:]
        self._next = end % self.window
        self._filled = min(self.window, self._filled + n)

    @property
    def predictions(self) -> int:
        """Predictions in the window now (at most ``window``)."""
        return self._filled

    @property
    def value(self) -> float:
        if self._filled < self.window:
            return math.nan
        estimate = self.reference_accuracy - (self.reference_confidence - float(self._values.mean()))
        return min(1.0, max(0.0, estimate))

    def state(self) -> dict[str, Any]:
        """The window's confidences, oldest first (checkpointed: a restart need not refill it)."""
        order = np.roll(self._values, -self._next) if self._filled == self.window else self._values[:self._filled]
        return {"window": self.window, "confidences": [float(v) for v in order]}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        self._values[:] = 0.0
        self._next = self._filled = 0
        if not state:
            return
        try:
            confidences = np.asarray(state.get("confidences", []), dtype=np.float64)
        except (TypeError, ValueError) as error:
            log.error("the checkpoint's estimated-accuracy window is unreadable (%s); it fills again", error)
            return
        if confidences.ndim == 1 and np.all(np.isfinite(confidences)):
            self.observe(confidences)


def estimate_accuracy(reference_accuracy: float | None, reference_confidences: Sequence[float] | None,
                      confidences: np.ndarray) -> float:
    """The estimate over all of ``confidences`` at once (``monitord evaluate``, per scenario);
    ``ValueError`` when the reference cannot give one."""
    estimate = AccuracyEstimate.from_reference(reference_accuracy, reference_confidences, max(1, len(confidences)))
    estimate.observe(confidences)
    return estimate.value


def watches_inputs(watched: WatchedDetector) -> bool:
    """Whether a detector watches what the model sees or says (not the labels)."""
    return ERROR_SIGNAL not in watched.spec.signals


def input_detectors_at_drift(detectors: DetectorStage) -> list[str]:
    """Names of the detectors on the model's inputs or outputs (not on labels) now at drift."""
    return [watched.spec.label for watched in detectors.detectors
            if watches_inputs(watched) and watched.detector.state.level == "drift"]


class EstimatedAccuracy:
    """Keeps the estimate, its reliability and their gauges in step with the predictions.

    Without a usable reference it stays NaN (and unreliable), and says once why.
    """

    def __init__(self, estimate: AccuracyEstimate | None, detectors: DetectorStage, metrics: Metrics,
                 unavailable: str | None = None) -> None:
        self.estimate = estimate
        self.detectors = detectors
        self.metrics = metrics
        #: Why there is no estimate (None when there is one).
        self.unavailable = unavailable
        #: Predictions observed since an input detector's last drift event (None: none seen),
        #: and that detector.
        self.since_drift: int | None = None
        self.last_drift: str | None = None
        detectors.listeners.append(self._on_detectors)
        if estimate is not None:
            metrics.reference_accuracy.set(estimate.reference_accuracy)
        self._export()

    @classmethod
    def for_reference(cls, reference: Mapping[str, Any] | None, reference_signals: Mapping[str, Sequence[float]],
                      window: int, detectors: DetectorStage, metrics: Metrics) -> EstimatedAccuracy:
        """From the model card: its reference description (``accuracy``) and reference signals."""
        accuracy = (reference or {}).get("accuracy")
        try:
            estimate = AccuracyEstimate.from_reference(accuracy, reference_signals.get(CONFIDENCE_SIGNAL), window)
        except ValueError as error:
            log.info("no estimated accuracy (monitord_estimated_accuracy stays NaN): %s", error)
            return cls(None, detectors, metrics, str(error))
        return cls(estimate, detectors, metrics)

    def observe(self, confidences: np.ndarray) -> None:
        """A batch's confidences, after the detectors took the same batch."""
        if self.estimate is not None:
            self.estimate.observe(confidences)
        if self.since_drift is not None:
            self.since_drift += len(confidences)
        self._export()

    def _on_detectors(self, updated: list[tuple[WatchedDetector, list[DriftEvent]]]) -> None:
        for watched, events in updated:
            drifts = [event.index for event in events if event.level == "drift"]
            if watches_inputs(watched) and drifts:
                # Counted from the drifting row on, once ``observe`` adds the batch.
                self.since_drift = -max(drifts)
                self.last_drift = watched.spec.label

    def unreliable_because(self) -> list[str]:
        """Input detectors at drift now, or whose drift event lies within the window."""
        drifting = input_detectors_at_drift(self.detectors)
        recent = (self.estimate is not None and self.since_drift is not None
                  and self.since_drift < self.estimate.window and self.last_drift is not None)
        if recent and self.last_drift not in drifting:
            drifting.append(self.last_drift)
        return drifting

    def reliable(self) -> bool:
        return self.estimate is not None and not self.unreliable_because()

    def state(self) -> dict[str, Any] | None:
        if self.estimate is None:
            return None
        return {**self.estimate.state(), "since_drift": self.since_drift, "last_drift": self.last_drift}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        state = state or {}
        if self.estimate is not None:
            self.estimate.restore(state)
        since = state.get("since_drift")
        self.since_drift = int(since) if isinstance(since, int) else None
        self.last_drift = state.get("last_drift") if isinstance(state.get("last_drift"), str) else None
        self._export()

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/detectors`` shows under ``estimated_accuracy``."""
        if self.estimate is None:
            return {"value": None, "reliable": False, "note": self.unavailable}
        value = self.estimate.value
        drifting = self.unreliable_because()
        status: dict[str, Any] = {
            "value": None if math.isnan(value) else value,
            "reliable": not drifting,
            "method": "difference of confidences",
            "window": self.estimate.window,
            "predictions": self.estimate.predictions,
            "reference_accuracy": self.estimate.reference_accuracy,
            "reference_confidence": self.estimate.reference_confidence,
        }
        if drifting:
            status["note"] = (f"input detector(s) {', '.join(drifting)} at drift within the window: a shift the "
                              "model is confidently wrong on does not lower its confidence, so the estimate may be "
                              "far too high")
        elif math.isnan(value):
            status["note"] = f"waiting for {self.estimate.window} predictions"
        return status

    def _export(self) -> None:
        self.metrics.estimated_accuracy.set(self.estimate.value if self.estimate is not None else math.nan)
        self.metrics.estimated_accuracy_reliable.set(1.0 if self.reliable() else 0.0)
