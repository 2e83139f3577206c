"""The detector stage: which values reach which detector, references, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from monitord.detectors import DetectorStage, WatchedDetector, model_reference
from monitord.metrics import Metrics
from monitord.settings import DetectorSpec
from monitord_testplugin import OverDetector


def test_stage_feeds_multi_signal_detectors_columns_in_order() -> None:
    seen: list[np.ndarray] = []

    class Recorder(OverDetector):
        def update(self, values):
            seen.append(np.array(values))
            return []

    spec = DetectorSpec(type="rec", signal=["b", "a"])
    stage = DetectorStage([WatchedDetector(spec, Recorder())], Metrics())
    stage.update({"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])})
    assert seen[0].tolist() == [[3.0, 1.0], [4.0, 2.0]]
    assert stage.states()[0]["signal"] == "b+a" and stage.states()[0]["name"] == "rec_b_a"


def test_model_reference_stacks_signals_and_respects_stream_reference() -> None:
    saved = {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "short": [1.0]}
    assert model_reference(DetectorSpec(type="x", signal="a"), saved).tolist() == [1.0, 2.0, 3.0]
    assert model_reference(DetectorSpec(type="x", signal=["a", "b"]), saved).shape == (3, 2)
    assert model_reference(DetectorSpec(type="x", signal=["a", "short"]), saved) is None
    assert model_reference(DetectorSpec(type="x", signal="missing"), saved) is None
    assert model_reference(DetectorSpec(type="x", signal="a", reference="stream"), saved) is None


def test_build_passes_references_and_refuses_duplicate_names() -> None:
    made = []

    def factory(spec, reference):
        made.append(reference)
        return OverDetector(**spec.params(), reference=reference)

    specs = [DetectorSpec(type="over", signal="confidence", limit=2), DetectorSpec(type="over", signal="error")]
    stage = DetectorStage.build(specs, lambda kind: factory, {"confidence": [0.5, 0.6]}, Metrics())
    assert made[0].tolist() == [0.5, 0.6] and made[1] is None
    assert [state["reference_samples"] for state in stage.states()] == [2, None]
    with pytest.raises(ValueError, match="repeated: over_error"):
        DetectorStage.build([specs[1], specs[1]], lambda kind: factory, {}, Metrics())


def test_metrics_exist_before_traffic_and_follow_each_batch(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    spec = DetectorSpec(type="over", signal="confidence", name="conf", limit=0.5)
    stage = DetectorStage([WatchedDetector(spec, OverDetector(limit=0.5))], metrics)
    labels = {"detector": "conf", "type": "over", "signal": "confidence"}
    assert metrics.registry.get_sample_value("monitord_drift_level", labels) == 0
    events = stage.update({"confidence": np.array([0.1, 0.9, 0.2])})
    assert [(e.index, e.level) for _, e in events] == [(1, "drift")]
    assert metrics.registry.get_sample_value("monitord_drift_level", labels) == 0  # back below after 0.2
    assert metrics.registry.get_sample_value("monitord_drift_statistic", labels) == pytest.approx(0.2)
    assert metrics.registry.get_sample_value("monitord_drift_events_total", {**labels, "level": "drift"}) == 1
    stage.update({"entropy": np.array([1.0])})
    assert "watches confidence, which the model does not produce" in caplog.text
    caplog.clear()
    stage.update({"error": np.array([1.0])}, from_model=False)
    assert caplog.text == ""


def test_a_failing_detector_is_skipped_and_counted_while_the_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(OverDetector):
        def update(self, values):
            raise ValueError("values must be 0 or 1")

    metrics = Metrics()
    healthy = OverDetector(limit=0.5)
    stage = DetectorStage([
        WatchedDetector(DetectorSpec(type="broken", signal="confidence"), Broken()),
        WatchedDetector(DetectorSpec(type="over", signal="confidence"), healthy),
    ], metrics)
    for _ in range(3):
        stage.update({"confidence": np.array([0.9])})
    assert healthy.samples == 3
    assert metrics.registry.get_sample_value(
        "monitord_detector_errors_total", {"detector": "broken_confidence", "type": "broken", "signal": "confidence"}) == 3
    assert caplog.text.count("values must be 0 or 1") == 1


def test_event_and_error_counters_exist_at_zero_before_the_first_batch() -> None:
    # A counter that first appears at 1 is invisible to increase()/rate(): the rules and
    # the dashboard would miss the first event of every detector.
    metrics = Metrics()
    specs = [DetectorSpec(type="over", signal="confidence"), DetectorSpec(type="over", signal=["a", "b"], name="ab")]
    DetectorStage.build(specs, lambda kind: lambda spec, reference: OverDetector(), {}, metrics)
    for labels in ({"detector": "over_confidence", "type": "over", "signal": "confidence"},
                   {"detector": "ab", "type": "over", "signal": "a+b"}):
        assert metrics.registry.get_sample_value("monitord_detector_errors_total", labels) == 0
        for level in ("warning", "drift"):
            assert metrics.registry.get_sample_value("monitord_drift_events_total", {**labels, "level": level}) == 0
