"""Accuracy without labels in the monitor: the window, its reliability, its checkpoint, its gauges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.items import Prediction
from monitord.metrics import Metrics
from monitord.monitor.estimated_accuracy import AccuracyEstimate, EstimatedAccuracy, input_detectors_at_drift
from monitord.monitor.monitor import Monitor
from monitord.plugins import load_plugins
from monitord.settings import DetectorSpec, Settings
from monitord.snapshots import DetectorSnapshots
from monitord.transport.entries import LabelBatch, PredictionBatch

REFERENCE = {"confidence": np.random.default_rng(0).normal(0.95, 0.02, 400).clip(0, 1).tolist()}
DESCRIPTION = {"source": "artifact", "accuracy": 0.97}


def batch(start: int, confidences: np.ndarray) -> PredictionBatch:
    predictions = [Prediction(f"p{start + i}", "t", "a", 0, float(c), {"confidence": float(c)},
                              "2026-12-05T00:00:00.000+00:00", None) for i, c in enumerate(confidences)]
    return PredictionBatch(predictions, {"confidence": np.asarray(confidences, dtype=np.float64)}, "node-1")


def monitor(window: int = 100, description: dict | None = DESCRIPTION) -> tuple[Monitor, Metrics]:
    metrics = Metrics()
    plugins = load_plugins()
    stage = DetectorStage.build([DetectorSpec(type="pht", signal="confidence"), DetectorSpec(type="hddm_a", signal="error")],
                                lambda kind: plugins.factory("detector", kind), REFERENCE, metrics)
    feedback = Feedback(Settings().feedback, metrics)
    feedback.attach(("a", "b"), stage)
    estimated = EstimatedAccuracy.for_reference(description, REFERENCE, window, stage, metrics)
    return Monitor(metrics, stage, feedback, DetectorSnapshots(stage, "fp"), estimated_accuracy=estimated), metrics


def gauge(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


def test_the_estimate_is_the_reference_accuracy_moved_by_the_change_in_mean_confidence() -> None:
    estimate = AccuracyEstimate(reference_accuracy=0.97, reference_confidence=0.95, window=4)
    estimate.observe(np.array([0.9, 0.9, 0.9]))
    assert math.isnan(estimate.value) and estimate.predictions == 3  # not a full window yet
    estimate.observe(np.array([0.9]))
    assert estimate.value == pytest.approx(0.97 - (0.95 - 0.9))
    # Sliding: the oldest leave first, across the ring's end and from batches longer than it.
    estimate.observe(np.array([0.5, 0.5]))
    assert estimate.value == pytest.approx(0.97 - (0.95 - 0.7))
    estimate.observe(np.array([0.1, 0.2, 0.6, 0.6, 0.6, 0.6]))
    assert estimate.value == pytest.approx(0.97 - (0.95 - 0.6))
    estimate.observe(np.zeros(4))
    assert estimate.value == pytest.approx(0.02)
    low = AccuracyEstimate(reference_accuracy=0.5, reference_confidence=0.95, window=2)
    low.observe(np.zeros(2))
    assert low.value == 0.0  # clipped to an accuracy


def test_the_checkpointed_window_continues_where_it_was() -> None:
    rng = np.random.default_rng(1)
    uninterrupted = AccuracyEstimate(0.97, 0.95, 50)
    first = AccuracyEstimate(0.97, 0.95, 50)
    for chunk in np.array_split(rng.uniform(0.5, 1.0, 137), 9):
        uninterrupted.observe(chunk)
        first.observe(chunk)
    second = AccuracyEstimate(0.97, 0.95, 50)
    second.restore(first.state())
    last = rng.uniform(0.5, 1.0, 20)
    uninterrupted.observe(last)
    second.observe(last)
    assert second.value == pytest.approx(uninterrupted.value)
    assert second.predictions == 50
    # A checkpoint that cannot be read starts an empty window rather than failing the restore.
    second.restore({"confidences": ["x", {}]})
    assert second.predictions == 0 and math.isnan(second.value)


def test_without_a_labelled_reference_there_is_no_estimate_and_it_says_how_to_get_one(caplog) -> None:
    with caplog.at_level("INFO", "monitord.monitor"):
        mon, metrics = monitor(description={"source": "artifact", "accuracy": None})
    mon.apply(batch(0, np.full(200, 0.9)))
    status = mon.status()["estimated_accuracy"]
    assert status["value"] is None and status["reliable"] is False
    assert "monitord reference DIR" in status["note"] and "labels" in status["note"]
    assert "monitord reference DIR" in caplog.text
    assert math.isnan(gauge(metrics, "monitord_estimated_accuracy"))
    assert gauge(metrics, "monitord_estimated_accuracy_reliable") == 0
    assert math.isnan(gauge(metrics, "monitord_reference_accuracy"))


def test_the_monitor_exports_the_estimate_once_the_window_is_full_and_shows_it() -> None:
    mon, metrics = monitor(window=100)
    assert gauge(metrics, "monitord_reference_accuracy") == pytest.approx(0.97)
    mon.apply(batch(0, np.full(60, 0.95)))
    assert math.isnan(gauge(metrics, "monitord_estimated_accuracy"))
    assert mon.status()["estimated_accuracy"]["note"] == "waiting for 100 predictions"
    mon.apply(batch(60, np.full(60, 0.95)))
    expected = 0.97 - (float(np.mean(REFERENCE["confidence"])) - 0.95)
    assert gauge(metrics, "monitord_estimated_accuracy") == pytest.approx(expected)
    assert gauge(metrics, "monitord_estimated_accuracy_reliable") == 1
    status = mon.status()["estimated_accuracy"]
    assert status["value"] == pytest.approx(expected) and status["reliable"] is True
    assert status["window"] == 100 and status["predictions"] == 100 and status["reference_accuracy"] == 0.97
    # It survives the monitor's checkpoint.
    other, other_metrics = monitor(window=100)
    other.restore(mon.state())
    assert gauge(other_metrics, "monitord_estimated_accuracy") == pytest.approx(expected)


def drift_events(metrics: Metrics, detector: str, signal: str, kind: str) -> float:
    return metrics.registry.get_sample_value(
        "monitord_drift_events_total", {"detector": detector, "type": kind, "signal": signal, "level": "drift"}) or 0


def test_reliability_goes_to_0_while_an_input_detector_is_at_drift_and_not_for_an_error_detector() -> None:
    mon, metrics = monitor(window=100)
    mon.apply(batch(0, np.full(100, 0.95)))
    # Right labels, then wrong ones, drive the error detector to drift: the estimate does not
    # rest on labels.
    for start in range(200, 1000, 50):
        mon.apply(batch(start, np.full(50, 0.95)))
        mon.apply(LabelBatch([(f"p{start + i}", "a") for i in range(50)]))
    start = 1000
    while drift_events(metrics, "hddm_a_error", "error", "hddm_a") == 0:
        assert start < 5000, "hddm_a never reached drift"
        mon.apply(batch(start, np.full(50, 0.95)))
        mon.apply(LabelBatch([(f"p{start + i}", "b") for i in range(50)]))
        start += 50
    mon.apply(batch(start, np.full(10, 0.95)))
    assert gauge(metrics, "monitord_estimated_accuracy_reliable") == 1
    assert mon.status()["estimated_accuracy"]["reliable"] is True
    # Confidence falling far below the reference's drives the detector on confidence to drift.
    start = 10_000
    while drift_events(metrics, "pht_confidence", "confidence", "pht") == 0:
        assert start < 20_000, "pht never reached drift"
        mon.apply(batch(start, np.full(20, 0.5)))
        start += 20
    assert gauge(metrics, "monitord_estimated_accuracy_reliable") == 0
    status = mon.status()["estimated_accuracy"]
    assert status["reliable"] is False and "pht_confidence" in status["note"] and "confidently wrong" in status["note"]
    # Page-Hinkley restarts after a detection: the estimate stays unreliable until a whole
    # window came after the drift event, and is reliable again then.
    after = 0
    while gauge(metrics, "monitord_estimated_accuracy_reliable") == 0:
        assert after <= 100, "still unreliable a whole window after the drift"
        mon.apply(batch(start + after, np.full(1, 0.95)))
        after += 1
    assert input_detectors_at_drift(mon.detectors) == []
    assert after >= 100 - 20  # the drift event lay in the last batch of 20
