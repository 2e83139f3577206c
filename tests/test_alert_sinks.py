"""The built-in sinks against local receivers: payload shape, signature, retries, spool."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp import web

from monitord.alerting.alert import ZERO_TIME, Alert
from monitord.alerting.sinks import SinkContext, build_sinks
from monitord.builtin.alertmanager_sink import AlertmanagerSink
from monitord.builtin.log_sink import LogSink
from monitord.builtin.webhook_sink import WebhookSink
from monitord.metrics import Metrics
from monitord.settings import SinkSpec

from daemon_process import free_port

SECRET = "s3cret-shared-key"


def alert(detector: str = "pht_confidence", resolved: bool = False) -> Alert:
    started = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    return Alert(
        labels={"alertname": "MonitordDrift", "detector": detector, "type": "pht", "signal": "confidence",
                "model": "digits", "instance": "h:1", "severity": "critical"},
        annotations={"statistic": "31", "threshold": "30", "summary": "drift", "description": "d"},
        starts_at=started,
        generator_url="http://h:1/v1/detectors",
        ends_at=datetime(2024, 5, 1, 12, 5, tzinfo=timezone.utc) if resolved else None,
    )


class Receiver:
    """Records raw POSTs; answers with the queued statuses first, then 200. ``down`` = port closed."""

    def __init__(self, path: str = "/hook") -> None:
        self.port = free_port()
        self.path = path
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.requests: list[tuple[float, bytes, dict[str, str], int]] = []
        self.statuses: list[int] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        self.requests.append((time.monotonic(), await request.read(), dict(request.headers), status))
        return web.json_response({"status": status}, status=status)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def delivered(self) -> list[dict]:
        return [json.loads(body) for _, body, _, status in self.requests if 200 <= status < 300]


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def context(tmp_path: Path, metrics: Metrics, name: str = "hook", **options) -> SinkContext:
    return SinkContext(name=name, type="webhook", options=options, state_dir=tmp_path, metrics=metrics,
                       external_url="http://h:1", shutdown_timeout=1.0)


def count(metrics: Metrics, sink: str, outcome: str) -> float:
    return metrics.registry.get_sample_value("monitord_alerts_total", {"sink": sink, "outcome": outcome}) or 0.0


async def test_webhook_posts_the_alertmanager_payload_signed_to_every_url(tmp_path: Path) -> None:
    first, second = Receiver(), Receiver()
    await first.up(), await second.up()
    metrics = Metrics()
    sink = WebhookSink(context(tmp_path, metrics, urls=[first.url, second.url], secret=SECRET))
    await sink.start()
    try:
        await sink.send([alert()])
        await wait_until(lambda: first.requests and second.requests)
    finally:
        await sink.close()
        await first.down(), await second.down()
    _, body, headers, _ = first.requests[0]
    assert second.requests[0][1] == body
    payload = json.loads(body)
    assert payload == {
        "version": "4", "groupKey": '{}:{alertname="MonitordDrift", detector="pht_confidence"}',
        "truncatedAlerts": 0, "status": "firing", "receiver": "hook",
        "groupLabels": {"alertname": "MonitordDrift", "detector": "pht_confidence"},
        "commonLabels": alert().labels, "commonAnnotations": alert().annotations, "externalURL": "http://h:1",
        "alerts": [{"status": "firing", "labels": alert().labels, "annotations": alert().annotations,
                    "startsAt": "2024-05-01T12:00:00.000Z", "endsAt": ZERO_TIME,
                    "generatorURL": "http://h:1/v1/detectors", "fingerprint": alert().fingerprint}],
    }
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Monitord-Signature"] == f"sha256={expected}"
    assert headers["Idempotency-Key"] == alert().idempotency_key == (
        f"{alert().fingerprint}-firing-2024-05-01T12:00:00.000Z-2024-05-01T12:00:00.000Z")
    assert headers["Content-Type"] == "application/json"
    assert count(metrics, "hook", "delivered") == 2 and count(metrics, "hook", "failed") == 0
    assert metrics.registry.get_sample_value("monitord_alert_spool_depth", {"sink": "hook"}) == 0
    assert not list((tmp_path / "spool" / "hook").glob("*.json"))


async def test_failed_attempts_are_retried_with_backoff_in_order(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.up()
    receiver.statuses = [503, 502, 200, 200]
    metrics = Metrics()
    sink = WebhookSink(context(tmp_path, metrics, urls=[receiver.url], backoff_initial_seconds=0.2,
                               backoff_max_seconds=0.3))
    sink.delivery._rng = lambda: 1.0  # the top of the jitter range: delays 0.2, then 0.3 (capped)
    await sink.start()
    try:
        await sink.send([alert("a")])
        await sink.send([alert("b"), alert("a", resolved=True)])
        await wait_until(lambda: len(receiver.delivered()) == 3)
    finally:
        await sink.close()
        await receiver.down()
    times = [t for t, *_ in receiver.requests]
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.3
    assert [(p["alerts"][0]["labels"]["detector"], p["status"]) for p in receiver.delivered()] == [
        ("a", "firing"), ("b", "firing"), ("a", "resolved")]
    assert receiver.delivered()[2]["alerts"][0]["endsAt"] == "2024-05-01T12:05:00.000Z"
    assert count(metrics, "hook", "failed") == 2 and count(metrics, "hook", "delivered") == 3


async def test_a_refusal_is_dropped_not_retried(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.up()
    receiver.statuses = [400]
    metrics = Metrics()
    sink = WebhookSink(context(tmp_path, metrics, urls=[receiver.url], backoff_initial_seconds=0.01))
    await sink.start()
    try:
        await sink.send([alert("a"), alert("b")])
        await wait_until(lambda: len(receiver.requests) == 2)
    finally:
        await sink.close()
        await receiver.down()
    assert count(metrics, "hook", "dropped") == 1 and count(metrics, "hook", "delivered") == 1


async def test_the_spool_survives_a_sink_restart_and_a_receiver_outage(tmp_path: Path) -> None:
    receiver = Receiver()  # down: nothing listens on its port
    metrics = Metrics()
    options = {"urls": [receiver.url], "secret": SECRET, "backoff_initial_seconds": 0.05,
               "backoff_max_seconds": 0.1}
    sink = WebhookSink(context(tmp_path, metrics, **options))
    await sink.start()
    await sink.send([alert("a")])
    await sink.send([alert("b")])
    await wait_until(lambda: count(metrics, "hook", "failed") >= 2)
    await sink.close()
    spooled = sorted((tmp_path / "spool" / "hook").glob("*.json"))
    assert len(spooled) == 2
    assert all(SECRET not in path.read_text() for path in spooled)
    assert metrics.registry.get_sample_value("monitord_alert_spool_depth", {"sink": "hook"}) == 2

    await receiver.up()
    metrics = Metrics()
    restarted = WebhookSink(context(tmp_path, metrics, **options))
    await restarted.start()
    try:
        await wait_until(lambda: len(receiver.delivered()) == 2)
    finally:
        await restarted.close()
        await receiver.down()
    assert [p["alerts"][0]["labels"]["detector"] for p in receiver.delivered()] == ["a", "b"]
    _, body, headers, _ = receiver.requests[0]
    assert headers["X-Monitord-Signature"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert not list((tmp_path / "spool" / "hook").glob("*.json"))
    assert metrics.registry.get_sample_value("monitord_alert_spool_depth", {"sink": "hook"}) == 0


async def test_a_full_spool_drops_the_oldest(tmp_path: Path) -> None:
    receiver = Receiver()
    metrics = Metrics()
    sink = WebhookSink(context(tmp_path, metrics, urls=[receiver.url], max_spool=2, backoff_initial_seconds=5))
    await sink.start()
    await sink.send([alert("a"), alert("b"), alert("c")])
    await sink.close()
    assert count(metrics, "hook", "dropped") == 1
    bodies = [json.loads(json.loads(p.read_text())["body"]) for p in sorted((tmp_path / "spool" / "hook").glob("*.json"))]
    assert [b["alerts"][0]["labels"]["detector"] for b in bodies] == ["b", "c"]


async def test_alertmanager_sink_posts_postable_alerts_and_keeps_them_alive(tmp_path: Path) -> None:
    receiver = Receiver("/api/v2/alerts")
    await receiver.up()
    metrics = Metrics()
    sink = AlertmanagerSink(SinkContext(
        name="am", type="alertmanager", state_dir=tmp_path, metrics=metrics, external_url="http://h:1",
        options={"url": f"http://127.0.0.1:{receiver.port}/", "ends_after_seconds": 5, "refresh_seconds": 0.3},
    ))
    await sink.start()
    try:
        posted_at = time.time()
        await sink.send([alert()])
        await wait_until(lambda: len(receiver.requests) >= 3)  # the first post and two refreshes
        await sink.send([alert(resolved=True)])
        await wait_until(lambda: json.loads(receiver.requests[-1][1])[0]["endsAt"] == "2024-05-01T12:05:00.000Z")
        settled = len(receiver.requests)
        await asyncio.sleep(0.7)
    finally:
        await sink.close()
        await receiver.down()
    assert len(receiver.requests) == settled  # no refresh once resolved
    (first,) = json.loads(receiver.requests[0][1])
    assert set(first) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert first["labels"] == alert().labels and first["annotations"] == alert().annotations
    assert first["startsAt"] == "2024-05-01T12:00:00.000Z" and first["generatorURL"] == "http://h:1/v1/detectors"
    ends = datetime.fromisoformat(first["endsAt"].replace("Z", "+00:00")).timestamp()
    assert posted_at + 4 < ends < posted_at + 6
    assert receiver.requests[0][2]["Content-Type"] == "application/json"
    assert count(metrics, "am", "delivered") == len(receiver.requests)


def test_bad_sink_options_name_the_key_and_never_echo_the_secret(tmp_path: Path) -> None:
    from monitord.plugins import load_plugins

    host = load_plugins({"MONITORD_LOAD_PLUGINS": ""})
    metrics = Metrics()
    make = lambda spec: context(tmp_path, metrics, spec.label, **spec.options())  # noqa: E731
    with pytest.raises(ValueError) as error:
        build_sinks([SinkSpec(type="log"), SinkSpec(type="webhook", urls=["ftp://x"], secret=["x", SECRET])],
                    lambda kind: host.factory("sink", kind), make)
    message = str(error.value)
    assert "sinks[1]" in message and "urls" in message and "secret" in message and SECRET not in message
    with pytest.raises(ValueError, match=r"sinks\[0\].*timout_seconds: unknown option"):
        build_sinks([SinkSpec(type="webhook", urls=["http://x"], timout_seconds=1)],
                    lambda kind: host.factory("sink", kind), make)
    with pytest.raises(ValueError, match="no sink named 'slack'"):
        build_sinks([SinkSpec(type="slack")], lambda kind: host.factory("sink", kind), make)
    with pytest.raises(ValueError, match="unique"):
        build_sinks([SinkSpec(type="log"), SinkSpec(type="log")], lambda kind: host.factory("sink", kind), make)
    with pytest.raises(ValueError, match="url"):
        build_sinks([SinkSpec(type="alertmanager")], lambda kind: host.factory("sink", kind), make)


async def test_log_sink_writes_one_structured_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    sink = LogSink(context(tmp_path, metrics, "log"))
    caplog.set_level("INFO", logger="monitord.alerts")
    await sink.send([alert(), alert(resolved=True)])
    lines = [r.getMessage() for r in caplog.records if r.name == "monitord.alerts"]
    assert len(lines) == 2 and lines[0].startswith("alert firing alertname=MonitordDrift detector=pht_confidence")
    assert f"fingerprint={alert().fingerprint}" in lines[0] and "summary=drift" in lines[0]
    assert lines[1].startswith("alert resolved") and "endsAt=2024-05-01T12:05:00.000Z" in lines[1]
    assert count(metrics, "log", "delivered") == 2
