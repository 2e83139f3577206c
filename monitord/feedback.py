"""Ground truth that arrives with or after a prediction: joining, accuracy, the error signal.

A label comes with the image (a folder's sub-folder, ``?label=`` on ``POST /v1/predict``)
or later through ``POST /v1/feedback`` with the prediction's id. Either way it becomes one
value of the ``error`` signal (1 wrong, 0 right) for the error-stream detectors and one
step of the rolling ``monitord_accuracy``. Predictions waiting for a label are bounded in
number and in age, so a client that never sends labels costs bounded memory.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from monitord.detectors import ERROR_SIGNAL, DetectorStage
from monitord.items import Prediction
from monitord.metrics import Metrics
from monitord.settings import FeedbackSettings

log = logging.getLogger("monitord.feedback")


@dataclass(frozen=True)
class FeedbackResult:
    """How one label fared; ``outcome`` is a ``monitord_feedback_total`` label."""

    id: str
    outcome: str
    correct: bool | None = None
    predicted: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


class PendingPredictions:
    """Predictions waiting for their label, the oldest forgotten first.

    Forgotten ids (by age or by capacity) are remembered a while longer, ids only, so a
    label that comes too late is told ``late`` rather than ``unknown``: the first means
    "raise feedback.ttl_seconds", the second "check the id".
    """

    def __init__(self, capacity: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._waiting: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._forgotten: OrderedDict[str, None] = OrderedDict()
        self._labelled: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, prediction_id: str, class_name: str) -> None:
        self.add_many([(prediction_id, class_name)])

    def add_many(self, predictions: Sequence[tuple[str, str]]) -> None:
        """``(id, predicted class)`` pairs of a batch: expired entries are dropped once for
        all of them (per prediction, that was a sixth of the monitor's time)."""
        self._expire()
        expires = self._clock() + self.ttl_seconds
        waiting = self._waiting
        for prediction_id, class_name in predictions:
            waiting.pop(prediction_id, None)
            waiting[prediction_id] = (class_name, expires)
        while len(waiting) > self.capacity:
            oldest, _ = waiting.popitem(last=False)
            self._remember(self._forgotten, oldest)

    def labelled(self, prediction_id: str) -> None:
        """The prediction came with its label: a later one is a duplicate."""
        self._waiting.pop(prediction_id, None)
        self._remember(self._labelled, prediction_id)

    def take(self, prediction_id: str) -> tuple[str, str | None]:
        """``(outcome, predicted class)``: joined, late, duplicate or unknown."""
        self._expire()
        entry = self._waiting.pop(prediction_id, None)
        if entry is not None:
            self._remember(self._labelled, prediction_id)
            return "joined", entry[0]
        if prediction_id in self._labelled:
            return "duplicate", None
        if prediction_id in self._forgotten:
            return "late", None
        return "unknown", None

    def state(self, wall: float) -> dict[str, Any]:
        """What ``restore`` needs, with expiry as wall-clock time (another process, another clock)."""
        now = self._clock()
        return {
            "waiting": [[pid, name, round(wall + expires - now, 3)] for pid, (name, expires) in self._waiting.items()],
            "labelled": list(self._labelled),
            "forgotten": list(self._forgotten),
        }

    def restore(self, state: dict[str, Any] | None, wall: float) -> None:
        self._waiting.clear()
        self._labelled.clear()
        self._forgotten.clear()
        if not state:
            return
        now = self._clock()
        for pid, name, expires in state.get("waiting", []):
            self._waiting[str(pid)] = (str(name), now + float(expires) - wall)
        for pid in state.get("labelled", []):
            self._labelled[str(pid)] = None
        for pid in state.get("forgotten", []):
            self._forgotten[str(pid)] = None
        self._expire()

    def _expire(self) -> None:
        now = self._clock()
        while self._waiting:
            oldest, (_, expires) = next(iter(self._waiting.items()))
            if expires > now:
                break
            del self._waiting[oldest]
            self._remember(self._forgotten, oldest)

    def _remember(self, ids: OrderedDict[str, None], prediction_id: str) -> None:
        ids[prediction_id] = None
        ids.move_to_end(prediction_id)
        while len(ids) > self.capacity:
            ids.popitem(last=False)


class Feedback:
    """Scores labelled predictions and joins late labels; feeds accuracy and detectors."""

    def __init__(self, settings: FeedbackSettings, metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._metrics = metrics
        self.pending = PendingPredictions(settings.max_pending, settings.ttl_seconds, clock)
        self._clock = clock
        self._wall = wall
        #: Labels whose prediction was not known yet, by id: (label, expiry), oldest first.
        self._held: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._recent: deque[bool] = deque()
        self._recent_correct = 0
        self._last_label: float | None = None
        self._classes: frozenset[str] = frozenset()
        self._detectors: DetectorStage | None = None
        self._warned_labels: set[str] = set()
        # Read at every scrape, so the accuracy goes NaN when labels stop without a new one.
        metrics.watch(metrics.accuracy, lambda: nan_for_none(self.accuracy))
        metrics.watch(metrics.accuracy_labels, lambda: self.accuracy_labels)

    def attach(self, class_names: Iterable[str], detectors: DetectorStage) -> None:
        self._classes = frozenset(class_names)
        self._detectors = detectors

    @property
    def accuracy_labels(self) -> int:
        """Labelled predictions the accuracy rests on: the window, or none once it is stale."""
        return 0 if self._stale() else len(self._recent)

    @property
    def accuracy(self) -> float | None:
        """Share right in the window; None below ``min_labels`` labels or once stale."""
        labels = self.accuracy_labels
        if labels < self.settings.min_labels:
            return None
        return self._recent_correct / labels

    def observe(self, predictions: Sequence[Prediction]) -> None:
        """Score predictions that came with a label (or whose label is held); keep the
        others for a later one."""
        self._expire_held()
        correct = []
        waiting = []
        for prediction in predictions:
            label = prediction.label
            if label is None and self._held:
                held = self._held.pop(prediction.id, None)
                if held is not None:
                    label = held[0]
                    self._metrics.feedback.labels("joined").inc()
            if label is None:
                waiting.append((prediction.id, prediction.class_name))
            elif self._known_label(label, prediction.source):
                self.pending.labelled(prediction.id)
                correct.append(label == prediction.class_name)
        if waiting:
            self.pending.add_many(waiting)
        self._score(correct)

    def receive(self, records: Sequence[tuple[str, str]]) -> list[FeedbackResult]:
        """Join ``(id, label)`` pairs to earlier predictions, in order. A label whose
        prediction is not known yet is held for ``feedback.grace_seconds`` (outcome
        ``held``, counted once it is joined or given up as ``unknown``)."""
        self._expire_held()
        results, correct = [], []
        for prediction_id, label in records:
            if label not in self._classes:
                results.append(FeedbackResult(prediction_id, "invalid", reason=self._unknown_label(label)))
                continue
            outcome, predicted = self.pending.take(prediction_id)
            if outcome == "joined":
                correct.append(label == predicted)
                results.append(FeedbackResult(prediction_id, outcome, label == predicted, predicted))
            elif outcome == "unknown" and self.settings.grace_seconds > 0:
                self._hold(prediction_id, label)
                results.append(FeedbackResult(prediction_id, "held", reason=_HELD.format(self.settings.grace_seconds)))
            else:
                results.append(FeedbackResult(prediction_id, outcome, reason=_REASONS[outcome]))
        for result in results:
            if result.outcome != "held":
                self._metrics.feedback.labels(result.outcome).inc()
        self._score(correct)
        return results

    def _hold(self, prediction_id: str, label: str) -> None:
        self._held.pop(prediction_id, None)
        self._held[prediction_id] = (label, self._clock() + self.settings.grace_seconds)
        while len(self._held) > self.settings.max_pending:
            self._held.popitem(last=False)
            self._metrics.feedback.labels("unknown").inc()

    def _expire_held(self) -> None:
        now = self._clock()
        while self._held:
            _, (_, expires) = next(iter(self._held.items()))
            if expires > now:
                break
            self._held.popitem(last=False)
            self._metrics.feedback.labels("unknown").inc()

    # -- the checkpoint -----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The join's state as plain data: waiting predictions, held labels, the accuracy
        window; times as wall-clock seconds, for a monitor in another process or host."""
        now, wall = self._clock(), self._wall()
        return {
            "pending": self.pending.state(wall),
            "held": [[pid, label, round(wall + expires - now, 3)] for pid, (label, expires) in self._held.items()],
            "recent": "".join("1" if right else "0" for right in self._recent),
            "last_label": None if self._last_label is None else round(wall - (now - self._last_label), 3),
        }

    def restore(self, state: dict[str, Any] | None) -> None:
        """Continue from ``state`` (None: from nothing), replacing what is in memory."""
        now, wall = self._clock(), self._wall()
        state = state or {}
        try:
            self.pending.restore(state.get("pending"), wall)
            self._held = OrderedDict((str(pid), (str(label), now + float(expires) - wall))
                                     for pid, label, expires in state.get("held", []))
            recent = str(state.get("recent", ""))[-self.settings.accuracy_window:]
            self._recent = deque(character == "1" for character in recent)
            last = state.get("last_label")
            self._last_label = None if last is None else now - (wall - float(last))
        except (TypeError, ValueError) as error:
            log.error("the feedback join's checkpoint is unreadable (%s); it starts empty", error)
            self.pending.restore(None, wall)
            self._held, self._recent, self._last_label = OrderedDict(), deque(), None
        self._recent_correct = sum(self._recent)

    def _score(self, correct: list[bool]) -> None:
        if not correct:
            return
        if self._stale():  # after a gap, old labels describe another time
            self._recent.clear()
            self._recent_correct = 0
        for right in correct:
            if len(self._recent) == self.settings.accuracy_window:
                self._recent_correct -= self._recent.popleft()
            self._recent.append(right)
            self._recent_correct += right
        self._last_label = self._clock()
        if self._detectors is not None:
            errors = 1.0 - np.asarray(correct, dtype=np.float64)
            self._detectors.update({ERROR_SIGNAL: errors}, from_model=False)

    def _stale(self) -> bool:
        return self._last_label is None or self._clock() - self._last_label > self.settings.accuracy_max_age_seconds

    def _known_label(self, label: str, source: str) -> bool:
        if label in self._classes:
            return True
        if label not in self._warned_labels and len(self._warned_labels) < 100:
            self._warned_labels.add(label)
            log.warning("%s: %s; such predictions are not scored", source, self._unknown_label(label))
        return False

    def _unknown_label(self, label: str) -> str:
        shown = ", ".join(sorted(self._classes)[:20])
        return f"label {label!r} is not one of the model's classes ({shown})"


def nan_for_none(value: float | None) -> float:
    return float("nan") if value is None else value


_HELD = ("no prediction with this id yet; the label waits {:g} s (feedback.grace_seconds) for it and is joined "
         "when it comes, else counted as unknown")

_REASONS = {
    "unknown": "no prediction with this id; use the id returned by POST /v1/predict (or the file's path under the inbox)",
    "late": "the prediction was forgotten before its label came (feedback.ttl_seconds, feedback.max_pending)",
    "duplicate": "this prediction already has its label",
}
