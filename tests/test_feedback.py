"""Joining late labels to predictions: bounded memory, time-to-live, accuracy, the error signal."""

from __future__ import annotations

import json
import math

import pytest

from monitord.detectors import DetectorStage, WatchedDetector
from monitord.feedback import Feedback, PendingPredictions
from monitord.items import Prediction
from monitord.metrics import Metrics
from monitord.settings import DetectorSpec, FeedbackSettings
from monitord_testplugin import OverDetector


def accuracy_now(metrics: Metrics) -> float:
    metrics.refresh()  # as a scrape does
    return metrics.registry.get_sample_value("monitord_accuracy")


def labels_now(metrics: Metrics) -> float:
    metrics.refresh()
    return metrics.registry.get_sample_value("monitord_accuracy_labels")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def prediction(prediction_id: str, predicted: str, label: str | None = None) -> Prediction:
    return Prediction(prediction_id, "test", predicted, int(predicted == "b"), 0.9, {}, "t", label)


def test_pending_predictions_join_once_then_report_duplicates() -> None:
    pending = PendingPredictions(capacity=10, ttl_seconds=60)
    pending.add("x", "a")
    assert pending.take("x") == ("joined", "a")
    assert pending.take("x") == ("duplicate", None)
    assert pending.take("never") == ("unknown", None)


def test_expired_and_evicted_predictions_are_late_not_unknown() -> None:
    clock = Clock()
    pending = PendingPredictions(capacity=3, ttl_seconds=10, clock=clock)
    pending.add("old", "a")
    clock.now = 11
    assert pending.take("old") == ("late", None)
    for name in ("p1", "p2", "p3", "p4"):
        pending.add(name, "a")
    assert len(pending) == 3  # bounded: p1 made room for p4
    assert pending.take("p1") == ("late", None)
    assert pending.take("p4") == ("joined", "a")


def test_memory_stays_bounded_under_a_flood_of_unlabelled_predictions() -> None:
    pending = PendingPredictions(capacity=100, ttl_seconds=60)
    for index in range(10_000):
        pending.add(str(index), "a")
    assert len(pending) == 100
    assert len(pending._forgotten) <= 100 and len(pending._labelled) <= 100


def stage_with_error_detector(metrics: Metrics) -> tuple[DetectorStage, OverDetector]:
    detector = OverDetector(limit=0.5, window=4)
    return DetectorStage([WatchedDetector(DetectorSpec(type="over", signal="error"), detector)], metrics), detector


def test_labels_feed_accuracy_and_the_error_signal() -> None:
    metrics = Metrics()
    stage, detector = stage_with_error_detector(metrics)
    feedback = Feedback(FeedbackSettings(accuracy_window=4, min_labels=1, grace_seconds=0), metrics)
    feedback.attach(["a", "b"], stage)
    assert math.isnan(accuracy_now(metrics))

    feedback.observe([prediction("1", "a", label="a"), prediction("2", "a"), prediction("3", "b")])
    assert detector.recent == [0.0] and feedback.accuracy == 1.0
    results = feedback.receive([("2", "b"), ("3", "b"), ("2", "a"), ("nope", "a"), ("3", "zebra"), ("1", "a")])
    assert [r.outcome for r in results] == ["joined", "joined", "duplicate", "unknown", "invalid", "duplicate"]
    assert [r.correct for r in results[:2]] == [False, True]
    assert "not one of the model's classes" in results[4].reason
    assert detector.recent == [0.0, 1.0, 0.0]
    assert accuracy_now(metrics) == pytest.approx(2 / 3)
    assert metrics.registry.get_sample_value("monitord_feedback_total", {"outcome": "joined"}) == 2
    assert metrics.registry.get_sample_value("monitord_feedback_total", {"outcome": "duplicate"}) == 2

    # accuracy is over the last accuracy_window labels only
    for index in range(4):
        feedback.observe([prediction(f"w{index}", "a", label="b")])
    assert feedback.accuracy == 0.0
    assert detector.level == "drift"
    assert metrics.registry.get_sample_value(
        "monitord_drift_level", {"detector": "over_error", "type": "over", "signal": "error"}) == 2


def test_folder_labels_outside_the_classes_are_not_scored(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    stage, detector = stage_with_error_detector(metrics)
    feedback = Feedback(FeedbackSettings(), metrics)
    feedback.attach(["a", "b"], stage)
    feedback.observe([prediction("2024-01-01/x.png", "a", label="2024-01-01")] * 3)
    assert detector.samples == 0 and feedback.accuracy is None
    assert sum("'2024-01-01' is not one of the model's classes" in r.message for r in caplog.records) == 1


def accuracy_metrics(metrics: Metrics) -> tuple[float, float]:
    """``monitord_accuracy`` and ``monitord_accuracy_labels`` as a scrape reads them."""
    return (accuracy_now(metrics),
            labels_now(metrics))


def test_accuracy_is_a_number_only_once_enough_labels_are_in_the_window() -> None:
    metrics = Metrics()
    stage, _ = stage_with_error_detector(metrics)
    feedback = Feedback(FeedbackSettings(accuracy_window=10, min_labels=3), metrics)
    feedback.attach(["a", "b"], stage)
    accuracy, labels = accuracy_metrics(metrics)
    assert math.isnan(accuracy) and labels == 0

    feedback.observe([prediction("1", "a", label="b")])  # one wrong label: no number yet
    accuracy, labels = accuracy_metrics(metrics)
    assert math.isnan(accuracy) and labels == 1 and feedback.accuracy is None
    feedback.observe([prediction("2", "a", label="a"), prediction("3", "a", label="a")])
    assert accuracy_metrics(metrics) == (pytest.approx(2 / 3), 3)
    for index in range(10):  # the window holds the last 10
        feedback.observe([prediction(f"w{index}", "a", label="a")])
    assert accuracy_metrics(metrics) == (1.0, 10)


def test_accuracy_goes_nan_once_no_label_came_for_its_max_age_and_restarts_after() -> None:
    clock = Clock()
    metrics = Metrics()
    stage, _ = stage_with_error_detector(metrics)
    feedback = Feedback(FeedbackSettings(accuracy_window=10, min_labels=2, accuracy_max_age_seconds=60), metrics, clock)
    feedback.attach(["a", "b"], stage)
    feedback.observe([prediction("1", "a", label="b"), prediction("2", "a", label="b")])
    clock.now = 30
    feedback.observe([prediction("3", "a"), prediction("4", "a", label="a")])
    assert accuracy_metrics(metrics) == (pytest.approx(1 / 3), 3)
    clock.now = 89  # 59 s after the last label: still a number
    assert accuracy_metrics(metrics) == (pytest.approx(1 / 3), 3)
    clock.now = 91  # evaluated at the scrape: no label for 61 s
    accuracy, labels = accuracy_metrics(metrics)
    assert math.isnan(accuracy) and labels == 0 and feedback.accuracy is None

    # A label after the gap starts a new window: the old labels describe another time.
    feedback.receive([("3", "a")])
    accuracy, labels = accuracy_metrics(metrics)
    assert math.isnan(accuracy) and labels == 1
    feedback.observe([prediction("5", "a", label="b")])
    assert accuracy_metrics(metrics) == (0.5, 2)


def test_min_labels_above_the_window_is_refused() -> None:
    with pytest.raises(ValueError, match="min_labels .* accuracy_window"):
        FeedbackSettings(accuracy_window=10, min_labels=11)


def test_a_label_before_its_prediction_is_held_then_joined_or_given_up() -> None:
    clock = Clock()
    metrics = Metrics()
    stage, detector = stage_with_error_detector(metrics)
    feedback = Feedback(FeedbackSettings(grace_seconds=10, min_labels=1), metrics, clock)
    feedback.attach(["a", "b"], stage)
    (held,) = feedback.receive([("soon", "b")])
    assert held.outcome == "held" and "feedback.grace_seconds" in held.reason
    assert metrics.registry.get_sample_value("monitord_feedback_total", {"outcome": "joined"}) == 0
    clock.now += 5
    feedback.observe([prediction("soon", "a")])  # arrives within the grace: joined, wrong
    assert detector.recent == [1.0] and feedback.accuracy == 0.0
    assert metrics.registry.get_sample_value("monitord_feedback_total", {"outcome": "joined"}) == 1
    assert feedback.receive([("soon", "b")])[0].outcome == "duplicate"
    (never,) = feedback.receive([("never", "a")])
    assert never.outcome == "held"
    clock.now += 11
    feedback.observe([prediction("other", "a")])  # the grace is over: given up as unknown
    assert metrics.registry.get_sample_value("monitord_feedback_total", {"outcome": "unknown"}) == 1
    feedback.observe([prediction("never", "a")])
    assert detector.recent == [1.0]  # its label was given up: nothing scored


def test_the_join_continues_from_its_checkpoint_in_another_process() -> None:
    clock, wall = Clock(), Clock()
    wall.now = 1_700_000_000.0
    metrics = Metrics()
    feedback = Feedback(FeedbackSettings(grace_seconds=10, ttl_seconds=100, accuracy_window=4, min_labels=1),
                        metrics, clock, wall)
    feedback.attach(["a", "b"], stage_with_error_detector(metrics)[0])
    feedback.observe([prediction("p1", "a"), prediction("p2", "b"), prediction("p3", "b"),
                      prediction("l1", "a", label="a")])
    feedback.receive([("p1", "a"), ("h1", "b")])  # p1 joined, h1 held
    state = json.loads(json.dumps(feedback.state()))

    # Another monitor, another clock: times travel as wall-clock seconds.
    later, later_wall = Clock(), Clock()
    later.now, later_wall.now = 5000.0, wall.now + 30
    other_metrics = Metrics()
    stage, detector = stage_with_error_detector(other_metrics)
    other = Feedback(FeedbackSettings(grace_seconds=10, ttl_seconds=100, accuracy_window=4, min_labels=1),
                     other_metrics, later, later_wall)
    other.attach(["a", "b"], stage)
    other.restore(state)
    assert other.accuracy == 1.0 and other.accuracy_labels == 2
    results = other.receive([("p2", "b"), ("p1", "a"), ("h1", "b")])
    assert [r.outcome for r in results] == ["joined", "duplicate", "held"]  # h1's grace ended 20 s ago: held anew
    later.now += 71  # 101 s after p3 was made, past its ttl of 100: expiry kept its time
    assert other.receive([("p3", "a")])[0].outcome == "late"
    other.restore(None)  # a fresh stream: nothing waits
    assert other.receive([("p2", "b")])[0].outcome == "held" and other.accuracy is None
