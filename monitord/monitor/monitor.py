"""Applying entries: the monitor's whole job, apart from reading them.

``Monitor.apply`` takes one entry at a time, in stream order. A prediction batch updates
every detector with its signals (the alert state machines follow, as the detector stage's
listeners), is scored or kept for a later label by the feedback join, counted in the
prediction metrics and written to the predictions log. A label batch is joined to the
predictions it names and gives one verdict per label.

``state``/``restore`` are the checkpoint: the detectors' snapshots, the open alert
episodes and the predictions waiting for a label, as plain JSON-able data. Restoring
replaces all of it, so a monitor that lost its lease and comes back restores exactly what
the last checkpoint holds.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np

from monitord.alerting.alert import Alert
from monitord.alerting.dispatcher import AlertDispatcher
from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.metrics import Metrics
from monitord.monitor.estimated_accuracy import EstimatedAccuracy
from monitord.predictions_log import PredictionsLog
from monitord.snapshots import DetectorSnapshots
from monitord.transport.entries import Entry, LabelBatch, PredictionBatch, Verdict

log = logging.getLogger("monitord.monitor")

STATE_VERSION = 1


class Monitor:
    """The detectors, the feedback join, the predictions log and the alerting, fed entries."""

    def __init__(
        self,
        metrics: Metrics,
        detectors: DetectorStage,
        feedback: Feedback,
        snapshots: DetectorSnapshots,
        predictions_log: PredictionsLog | None = None,
        alerting: AlertDispatcher | None = None,
        reference: dict[str, Any] | None = None,
        estimated_accuracy: EstimatedAccuracy | None = None,
    ) -> None:
        self.metrics = metrics
        self.detectors = detectors
        self.feedback = feedback
        self.snapshots = snapshots
        self.predictions_log = predictions_log
        self.alerting = alerting
        #: The reference detectors compare with, as the model card describes it.
        self.reference = reference
        #: Accuracy without labels, from the predictions' confidence (None: not kept).
        self.estimated_accuracy = estimated_accuracy
        #: Entries applied since this process started (for logs and tests).
        self.applied = 0
        self.snapshot_fitted = True
        self._class_counters: dict[str, Any] = {}

    def apply(self, entry: Entry) -> list[Verdict]:
        """Apply one entry; a label batch's verdicts, in order (none for predictions)."""
        self.applied += 1
        if isinstance(entry, PredictionBatch):
            self._apply_predictions(entry)
            return []
        if isinstance(entry, LabelBatch):
            return [Verdict(result.id, result.outcome, result.correct, result.predicted, result.reason)
                    for result in self.feedback.receive(list(entry.labels))]
        raise TypeError(f"not an entry: {type(entry).__name__}")

    def _apply_predictions(self, batch: PredictionBatch) -> None:
        predictions = batch.predictions
        self.detectors.update(batch.signals)
        self.feedback.observe(predictions)
        for name, count in Counter(prediction.class_name for prediction in predictions).items():
            counter = self._class_counters.get(name)
            if counter is None:  # labels() validates and locks on every call: keep the children
                counter = self._class_counters[name] = self.metrics.predictions.labels(name)
            counter.inc(count)
        observe_confidence = self.metrics.confidence.observe
        for prediction in predictions:
            observe_confidence(prediction.confidence)
        if self.estimated_accuracy is not None:  # after the detectors: their levels say if it is reliable
            self.estimated_accuracy.observe(
                np.fromiter((p.confidence for p in predictions), dtype=np.float64, count=len(predictions)))
        if self.predictions_log is not None:
            self.predictions_log.write(predictions)

    # -- the checkpoint ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything the next monitor needs to continue from here exactly."""
        return {
            "version": STATE_VERSION,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "detectors": self.snapshots.collect(),
            "alerts": [alert.to_state() for alert in self.alerting.firing()] if self.alerting else [],
            "feedback": self.feedback.state(),
            "estimated_accuracy": self.estimated_accuracy.state() if self.estimated_accuracy else None,
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from ``state`` (None: from the beginning). Replaces what is in memory;
        a part that does not fit (another model, other detectors) is reported and starts fresh."""
        if state is not None and state.get("version") != STATE_VERSION:
            log.error("the checkpoint has format version %r, this monitord writes %d; starting fresh",
                      state.get("version"), STATE_VERSION)
            state = None
        state = state or {}
        #: Whether the detectors' snapshot fitted (False: it was of another model or other
        #: detectors, and they start fresh); its keeper may set it aside.
        self.snapshot_fitted = self.snapshots.restore_from(state.get("detectors"))
        self.feedback.restore(state.get("feedback"))
        if self.estimated_accuracy is not None:
            self.estimated_accuracy.restore(state.get("estimated_accuracy"))
        if self.alerting is not None:
            saved = []
            for item in state.get("alerts", []):
                try:
                    saved.append(Alert.from_state(item))
                except (KeyError, TypeError, ValueError) as error:
                    log.error("an open alert in the checkpoint is unreadable (%s); left out", error)
            self.alerting.reopen(saved)

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/detectors`` shows, on this node or (published) on every other; the
        status page (``GET /v1/status``) also shows the labelled accuracy and open alerts."""
        status: dict[str, Any] = {"detectors": self.detectors.states()}
        if self.reference is not None:
            status["reference"] = self.reference
        if self.estimated_accuracy is not None:
            status["estimated_accuracy"] = self.estimated_accuracy.status()
        status["accuracy"] = {"value": self.feedback.accuracy, "labels": self.feedback.accuracy_labels}
        if self.alerting is not None:
            status["alerts"] = [alert.to_webhook() for alert in self.alerting.firing()]
        return status
