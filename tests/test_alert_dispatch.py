"""The dispatcher: detector stage → state machines → sinks, and open episodes across restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from monitord.alerting.alert import Alert
from monitord.alerting.dispatcher import AlertDispatcher, read_open_alerts
from monitord.alerting.episodes import AlertSource
from monitord.detectors import DetectorStage, WatchedDetector
from monitord.metrics import Metrics
from monitord.settings import AlertSettings, DetectorSpec
from monitord_testplugin import OverDetector

SOURCE = AlertSource(model="m", instance="h:1", generator_url="http://h:1/v1/detectors")


class Clock:
    t = 100.0

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t


class RecordingSink:
    name = "rec"

    def __init__(self) -> None:
        self.sent: list[Alert] = []
        self.started_with: list[Alert] | None = None
        self.closed = False

    async def start(self, firing: Sequence[Alert] = ()) -> None:
        self.started_with = list(firing)

    async def send(self, alerts: Sequence[Alert]) -> None:
        self.sent.extend(alerts)

    async def close(self) -> None:
        self.closed = True


def stage(*names: str) -> DetectorStage:
    return DetectorStage([WatchedDetector(DetectorSpec(type="over", signal="error", name=name), OverDetector(0.5))
                          for name in names], Metrics())


async def settle() -> None:
    """Let the dispatch task hand over what is queued (its state save runs in a thread)."""
    await asyncio.sleep(0.2)


async def dispatcher(tmp_path: Path, detectors: DetectorStage, clock: Clock) -> tuple[AlertDispatcher, RecordingSink]:
    sink = RecordingSink()
    alerting = AlertDispatcher(AlertSettings(cooldown_seconds=5, resolve_after_samples=1), [sink], SOURCE, tmp_path,
                               clock.monotonic, clock.wall, tick_seconds=3600)
    alerting.attach(detectors)
    # As the monitor starts: episodes an earlier run kept reopen, then the sinks start.
    alerting.reopen([Alert.from_state(state) for state in read_open_alerts(tmp_path)])
    await alerting.start()
    return alerting, sink


async def test_feedback_updates_fire_and_episodes_outlive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    detectors = stage("errors", "gone")
    alerting, sink = await dispatcher(tmp_path, detectors, clock)
    detectors.update({"error": np.array([1.0])}, from_model=False)  # the feedback path
    await settle()
    assert [(a.labels["detector"], a.status) for a in sink.sent] == [("errors", "firing"), ("gone", "firing")]
    saved = json.loads((tmp_path / "alerts.json").read_text())["open"]
    assert sorted(item["labels"]["detector"] for item in saved) == ["errors", "gone"]
    await alerting.close()
    assert sink.closed and len(sink.sent) == 2  # nothing resolves on shutdown

    # Restart: "gone" is no longer configured (resolved at once), "errors" continues.
    clock.t += 60
    detectors = stage("errors")
    alerting, sink = await dispatcher(tmp_path, detectors, clock)
    await settle()
    assert [a.labels["detector"] for a in sink.started_with] == ["errors"]
    assert [(a.labels["detector"], a.status) for a in sink.sent] == [("gone", "resolved")]
    detectors.update({"error": np.array([0.0])}, from_model=False)
    clock.t += 4.5
    alerting.tick()
    await settle()
    assert len(sink.sent) == 1
    clock.t += 0.5
    alerting.tick()
    await settle()
    (resolved,) = sink.sent[1:]
    assert resolved.status == "resolved" and resolved.labels["detector"] == "errors"
    assert resolved.starts_at.timestamp() == 1_700_000_100.0  # the first run's startsAt
    await alerting.close()
    assert json.loads((tmp_path / "alerts.json").read_text())["open"] == []
