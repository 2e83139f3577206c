"""Every counter series whose labels are known at set-up exists at 0 from the first scrape.

``increase()`` and ``rate()`` need two samples of a series: a counter that first appears at
1 (created on first use) hides its first increment from the rules and the dashboard
(configs/prometheus_rules.test.yaml shows the case with promtool). A sink plugin counts its
outcomes through the documented ``SinkContext.count``.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Sequence

from pathlib import Path

import pytest

from monitord.alerting.sinks import SinkContext, build_sinks
from monitord.builtin.log_sink import LogSink
from monitord.metrics import ALERT_OUTCOMES, FEEDBACK_OUTCOMES, OUTCOMES, Metrics
from monitord.settings import SinkSpec


class PluginSink:
    """A third-party sink written against the documented API only: it counts what it
    delivers with ``context.count``, and declares nothing."""

    def __init__(self, context: SinkContext) -> None:
        self.name = context.name
        self.context = context

    async def start(self, firing: Sequence[Any] = ()) -> None:
        pass

    async def send(self, alerts: Sequence[Any]) -> None:
        self.context.count("delivered", len(alerts))

    async def close(self) -> None:
        pass


def test_every_sink_has_its_alert_series_at_zero_also_one_that_declares_none(tmp_path: Path) -> None:
    metrics = Metrics()
    specs = [SinkSpec(type="pager"), SinkSpec(type="log")]
    factories = {"pager": PluginSink, "log": LogSink}
    build_sinks(specs, factories.__getitem__,
                lambda spec: SinkContext(spec.label, spec.type, spec.options(), tmp_path, metrics))
    for sink in ("pager", "log"):
        for outcome in ALERT_OUTCOMES:
            assert metrics.registry.get_sample_value("monitord_alerts_total", {"sink": sink, "outcome": outcome}) == 0


async def test_a_plugin_sink_counts_its_outcomes_through_the_documented_method(tmp_path: Path) -> None:
    metrics = Metrics()
    (sink,) = build_sinks([SinkSpec(type="pager", name="oncall")], {"pager": PluginSink}.__getitem__,
                          lambda spec: SinkContext(spec.label, spec.type, spec.options(), tmp_path, metrics))

    def counted(outcome: str) -> float | None:
        return metrics.registry.get_sample_value("monitord_alerts_total", {"sink": "oncall", "outcome": outcome})

    await sink.send(["firing", "resolved"])
    await sink.send(["firing"])
    assert (counted("delivered"), counted("failed"), counted("dropped")) == (3, 0, 0)
    sink.context.count("failed")
    sink.context.count("dropped", 2)
    assert (counted("delivered"), counted("failed"), counted("dropped")) == (3, 1, 2)


def test_a_sink_cannot_count_an_outcome_the_metric_does_not_have(tmp_path: Path) -> None:
    context = SinkContext("oncall", "pager", {}, tmp_path, Metrics())
    with pytest.raises(ValueError, match="counted outcome 'sent'; monitord_alerts_total takes delivered, failed, dropped"):
        context.count("sent")
    with pytest.raises(ValueError, match="a count only grows"):
        context.count("delivered", -1)
    assert context.metrics.registry.get_sample_value(
        "monitord_alerts_total", {"sink": "oncall", "outcome": "sent"}) is None


DAEMON_SETTINGS = """
[[sinks]]
type = "log"
[[sinks]]
type = "webhook"
urls = ["http://127.0.0.1:9/never-called"]
[[sinks]]
type = "alertmanager"
url = "http://127.0.0.1:9"
"""


def test_a_real_daemon_exports_every_known_counter_series_at_zero_before_any_image(daemon) -> None:
    process = daemon(DAEMON_SETTINGS)
    samples = process.metrics()
    with urllib.request.urlopen(process.url + "/v1/detectors", timeout=10) as response:
        detectors = json.loads(response.read())["detectors"]
    assert len(detectors) == 5  # the default set: pht, iks, nm_ddm, class_mix, bernoulli_cusum

    expected: list[tuple[str, dict[str, str]]] = []
    for source in ("folder", "http"):
        expected += [("monitord_images_total", {"source": source, "outcome": o}) for o in OUTCOMES]
    expected += [("monitord_predictions_total", {"class": str(digit)}) for digit in range(10)]
    expected += [("monitord_feedback_total", {"outcome": o}) for o in FEEDBACK_OUTCOMES]
    for sink in ("log", "webhook", "alertmanager"):
        expected += [("monitord_alerts_total", {"sink": sink, "outcome": o}) for o in ALERT_OUTCOMES]
    for detector in detectors:
        labels = {"detector": detector["name"], "type": detector["type"], "signal": detector["signal"]}
        expected.append(("monitord_detector_errors_total", labels))
        expected += [("monitord_drift_events_total", {**labels, "level": level}) for level in ("warning", "drift")]

    missing = [(name, labels) for name, labels in expected if (name, tuple(sorted(labels.items()))) not in samples]
    assert missing == [], f"series absent before the first image: {missing}"
    assert {samples[(name, tuple(sorted(labels.items())))] for name, labels in expected} == {0.0}
