"""What becomes of a batch of predictions once the model has made them: the drift
detectors, the feedback join, the prediction metrics and the predictions log.

Apart from the pipeline so that an ingest worker (a process of its own with its own
pipeline and model, see ``ingest_worker``) can hand its batches to the main process,
where the one set of detectors lives: every inference reaches every detector exactly
once, whichever process made it.
"""

from __future__ import annotations

from collections import Counter
from typing import Awaitable, Mapping, Protocol, Sequence

import numpy as np

from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.items import Prediction
from monitord.metrics import Metrics
from monitord.predictions_log import PredictionsLog


class BatchObserver(Protocol):
    """Takes each batch of predictions with the signals they came with, in columns."""

    def observe(
        self, predictions: Sequence[Prediction], signals: Mapping[str, np.ndarray]
    ) -> Awaitable[None] | None:
        """Record the batch. An awaitable result means "recorded once it completes": the
        pipeline answers the batch's clients only then, so a label sent right after an
        answer always finds its prediction."""
        ...


class LocalObservers:
    """The observers of the main process: detectors, feedback, metrics, log, in that order.

    Known to the feedback join before any client sees a prediction and can send a label.
    """

    def __init__(
        self,
        metrics: Metrics,
        detectors: DetectorStage | None = None,
        feedback: Feedback | None = None,
        predictions_log: PredictionsLog | None = None,
    ) -> None:
        self.metrics = metrics
        self.detectors = detectors
        self.feedback = feedback
        self.predictions_log = predictions_log
        self._class_counters: dict[str, object] = {}

    def observe(self, predictions: Sequence[Prediction], signals: Mapping[str, np.ndarray]) -> None:
        if self.detectors is not None:
            self.detectors.update(signals)
        if self.feedback is not None:
            self.feedback.observe(predictions)
        for name, count in Counter(prediction.class_name for prediction in predictions).items():
            counter = self._class_counters.get(name)
            if counter is None:  # labels() validates and locks on every call: keep the children
                counter = self._class_counters[name] = self.metrics.predictions.labels(name)
            counter.inc(count)  # type: ignore[attr-defined]
        observe_confidence = self.metrics.confidence.observe
        for prediction in predictions:
            observe_confidence(prediction.confidence)
        if self.predictions_log is not None:
            self.predictions_log.write(predictions)
