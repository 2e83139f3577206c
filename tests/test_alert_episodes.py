"""One alert per drift of the data, with the real Page-Hinkley detector.

PHT restarts after every detection: under a change that persists with a wider spread than
the reference it re-detects every few hundred samples, and a return to the reference is a
change it detects too. An episode must follow the data: open from the first detection until
the detector has seen ``alerts.resolve_after_samples`` samples without coming back to the
level; a traffic pause (no samples) resolves nothing, and a detection that is the return
to the reference never opens an episode.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import numpy as np

from monitord.alerting.alert import Alert
from monitord.alerting.episodes import AlertSource, DetectorAlerts
from monitord.detectors import DriftEvent
from monitord.settings import AlertSettings
from monitord_drift.pht import PageHinkley

from daemon_process import wait_for
from servers import WebhookReceiver
from fake_clock import Clock

SOURCE = AlertSource(model="m", instance="127.0.0.1:8000", generator_url="http://127.0.0.1:8000/v1/detectors")


class Run:
    """PHT and its alert state machine, fed batches of ``batch`` samples, one per second."""

    def __init__(self, seed: int, batch: int = 10, **settings) -> None:
        self.rng = np.random.default_rng(seed)
        self.detector = PageHinkley(reference=self.rng.normal(0.0, 1.0, 500))
        self.clock = Clock()
        self.alerts = DetectorAlerts("pht_confidence", "pht", "confidence", SOURCE,
                                     AlertSettings(**{"cooldown_seconds": 10, "renotify_seconds": 0, **settings}),
                                     self.clock.monotonic, self.clock.wall)
        self.batch = batch
        self.samples = 0
        self.events: list[tuple[int, DriftEvent]] = []
        self.notified: list[tuple[int, Alert]] = []

    def feed(self, mean: float, spread: float, count: int) -> None:
        values = self.rng.normal(mean, spread, count)
        for start in range(0, count, self.batch):
            chunk = values[start:start + self.batch]
            events = self.detector.update(chunk)
            self.events.extend((self.samples + event.index, event) for event in events)
            self.samples += len(chunk)
            self.clock.t += 1.0
            self._note(self.alerts.observe(self.detector.state, events))
            self._note(self.alerts.tick(self.detector.state))

    def pause(self, seconds: float) -> None:
        """No traffic: only the 1 s ticks."""
        for _ in range(int(seconds)):
            self.clock.t += 1.0
            self._note(self.alerts.tick(self.detector.state))

    def _note(self, alerts: list[Alert]) -> None:
        self.notified.extend((self.samples, alert) for alert in alerts)

    def drifts(self, start: int, end: int) -> list[tuple[int, DriftEvent]]:
        return [(at, event) for at, event in self.events if event.level == "drift" and start <= at < end]

    def story(self) -> list[tuple[str, str]]:
        return [(alert.labels["severity"], alert.status) for _, alert in self.notified]

    def by_severity(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for _, alert in self.notified:
            found.setdefault(alert.labels["severity"], []).append(alert.status)
        return found


def test_one_episode_while_pht_keeps_redetecting_a_steady_shift_then_returns() -> None:
    run = Run(seed=1, warning_alerts=False)
    run.feed(0.0, 1.0, 1000)
    run.feed(-1.5, 3.0, 3000)  # wider than the reference: PHT re-detects again and again
    shifted = run.drifts(1000, 4000)
    gaps = np.diff([at for at, _ in shifted])
    # The scenario: many re-detections, some further apart than the cool-down's 10 batches.
    assert len(shifted) > 10 and gaps.max() > 10 * run.batch, gaps
    assert not any(event.toward_reference for _, event in shifted[:1])
    run.feed(0.0, 1.0, 2000)
    returns = run.drifts(4000, 6000)
    assert returns and returns[0][1].toward_reference is True  # PHT detects the way back

    assert run.story() == [("critical", "firing"), ("critical", "resolved")]
    (fired_at, fired), (resolved_at, resolved) = run.notified
    assert fired_at <= shifted[0][0] + run.batch
    assert resolved.fingerprint == fired.fingerprint and resolved.starts_at == fired.starts_at
    # Resolved once the stream stayed clean for resolve_after_samples (1000 by default)
    # after the detector's level fell back (it shows drift for min_samples after a detection).
    last = returns[-1][0]
    assert last + 1000 <= resolved_at <= last + run.detector.min_samples + 1000 + 2 * run.batch, resolved_at


def test_a_traffic_pause_resolves_nothing() -> None:
    run = Run(seed=1, warning_alerts=False)
    run.feed(0.0, 1.0, 1000)
    run.feed(-1.5, 3.0, 500)
    assert run.story() == [("critical", "firing")]
    run.pause(3600)  # an hour without images, the data still rotated
    run.feed(-1.5, 3.0, 500)
    assert run.story() == [("critical", "firing")]
    run.pause(3600)
    run.feed(0.0, 1.0, 999)  # back to clean, but not yet for long enough
    run.pause(600)
    assert run.story() == [("critical", "firing")]
    run.feed(0.0, 1.0, 1000)
    assert run.story() == [("critical", "firing"), ("critical", "resolved")]


def test_a_return_to_the_reference_after_a_resolve_opens_no_episode() -> None:
    run = Run(seed=0)
    run.feed(0.0, 1.0, 1000)
    # A shift with the reference's spread: after its first detection PHT settles on the new
    # mean and stays quiet, so the episode resolves (a restarting detector forgets the
    # reference after a drift; resolve_after_samples is all the evidence it gives).
    run.feed(-1.0, 1.0, 2000)
    assert run.by_severity() == {"warning": ["firing", "resolved"], "critical": ["firing", "resolved"]}
    run.feed(0.0, 1.0, 2000)  # the way back is detected, at the warning level and at drift...
    back = [event for at, event in run.events if 3000 <= at < 5000]
    assert {event.level for event in back} == {"warning", "drift"}
    assert all(event.toward_reference is True for event in back)
    assert len(run.notified) == 4  # ...and is no new drift
    run.feed(1.0, 1.0, 1000)  # a new change away from the reference is one
    away = [event for at, event in run.events if at >= 5000]
    assert away and all(event.toward_reference is False for event in away)
    assert run.by_severity() == {"warning": ["firing", "resolved", "firing"],
                                 "critical": ["firing", "resolved", "firing"]}


def test_renotify_and_resolve_count_samples_and_seconds() -> None:
    run = Run(seed=2, warning_alerts=False, resolve_after_samples=50, cooldown_seconds=30)
    run.feed(0.0, 1.0, 1000)
    run.feed(-2.0, 1.0, 100)
    assert run.story() == [("critical", "firing")]
    run.feed(-2.0, 1.0, 60)  # 60 quiet samples in 6 s: samples enough, seconds not
    assert run.story() == [("critical", "firing")]
    run.pause(30)  # now both
    assert run.story() == [("critical", "firing"), ("critical", "resolved")]


# -- the daemon, the digits model, images rotated by 90 degrees ----------------------------

PER_REQUEST = 20


def digit_stream(rotate: bool, count: int, seed: int) -> list[bytes]:
    from monitord_torchvision.digits import digit_png_bytes, held_out_digits

    images, _ = held_out_digits()
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(len(images)), count))
    if rotate:
        images = np.rot90(images, 1, axes=(1, 2))
    return [digit_png_bytes(np.ascontiguousarray(images[i])) for i in order]


async def post_all(url: str, pngs: list[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(pngs), PER_REQUEST):
            form = aiohttp.FormData()
            for index, data in enumerate(pngs[start:start + PER_REQUEST]):
                form.add_field("image", data, filename=f"{index}.png", content_type="image/png")
            async with session.post(url + "/v1/predict", data=form) as response:
                assert response.status == 200, await response.text()


def test_a_rotated_stream_with_a_pause_and_a_return_is_one_episode(daemon) -> None:
    receiver = WebhookReceiver()
    try:
        server = daemon(f"""
sources = ["http"]
[alerts]
cooldown_seconds = 2.0
renotify_seconds = 0
warning_alerts = false
[[detectors]]
type = "pht"
signal = "confidence"
[[sinks]]
type = "webhook"
urls = ["{receiver.url}"]
backoff_initial_seconds = 0.2
backoff_max_seconds = 1.0
""")
        asyncio.run(post_all(server.url, digit_stream(False, 300, seed=1)))
        asyncio.run(post_all(server.url, digit_stream(True, 1000, seed=2)))
        wait_for(lambda: len(receiver.bodies()) >= 1, 30, message="the firing alert")
        time.sleep(5.0)  # a traffic pause longer than the cool-down, the data still rotated
        asyncio.run(post_all(server.url, digit_stream(True, 500, seed=3)))
        asyncio.run(post_all(server.url, digit_stream(False, 1300, seed=4)))  # back to clean
        wait_for(lambda: len(receiver.bodies()) >= 2, 60, message="the resolved alert")
        events = server.metric("monitord_drift_events_total", detector="pht_confidence", type="pht",
                               signal="confidence", level="drift")
        assert server.terminate() == 0
    finally:
        receiver.close()
    alerts = [alert for body in receiver.bodies() for alert in body["alerts"]]
    assert [alert["status"] for alert in alerts] == ["firing", "resolved"], alerts
    assert alerts[0]["fingerprint"] == alerts[1]["fingerprint"] and alerts[0]["startsAt"] == alerts[1]["startsAt"]
    assert events >= 3, events  # PHT did re-detect within the one episode
    print(f"one episode over {events:g} PHT drift events")
