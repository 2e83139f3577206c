"""Alert identity: Alertmanager's fingerprint, a key per notification, an ``instance`` that
matches Prometheus's scrape target, episodes that outlive a restart on another port, and an
inhibit rule that keeps replicas apart. Checked against the real Alertmanager where it matters.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import yaml

from monitord.alerting.alert import Alert, fingerprint
from monitord.alerting.episodes import AlertSource, DetectorAlerts
from monitord.alerting.sinks import SinkContext
from monitord.builtin.alertmanager_sink import AlertmanagerSink
from monitord.builtin.webhook_sink import WebhookSink
from monitord.detectors import DetectorState, DriftEvent
from monitord.metrics import Metrics
from monitord.settings import AlertSettings, Settings

from daemon_process import DaemonProcess, free_port, wait_for
from installed_plugin import install_testplugin
from monitord_testplugin import png
from servers import WebhookReceiver, get_json, start_alertmanager
from test_alert_sinks import Receiver, wait_until
from fake_clock import Clock

CONFIGS = Path(__file__).parents[1] / "configs"
SOURCE = AlertSource(model="digits", instance="127.0.0.1:8000", generator_url="http://127.0.0.1:8000/v1/detectors")


def state(level: str, samples: int) -> DetectorState:
    return DetectorState(statistic=1.0, threshold=0.5, p_value=None, level=level, samples=samples)


def alertmanager_alerts(url: str) -> list[dict]:
    return get_json(url + "/api/v2/alerts")


def test_fnv1a_fingerprint_of_known_labelsets() -> None:
    # Alertmanager's fingerprint of the empty labelset is FNV-1a's offset basis.
    assert fingerprint({}) == "cbf29ce484222325"
    # Read back from Alertmanager 0.25 (POST /api/v2/alerts, then GET): see the next test.
    assert fingerprint({"alertname": "MonitordDrift", "detector": "pht_confidence", "instance": "127.0.0.1:8000",
                        "severity": "critical", "Zed": "ünï"}) == "b8b6f6fb1fd676f4"


async def test_the_fingerprint_is_the_one_alertmanager_computes(tmp_path: Path) -> None:
    alertmanager = start_alertmanager(tmp_path, yaml.safe_dump(
        {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
    clock = Clock()
    alerts = [
        DetectorAlerts(name, "pht", signal, AlertSource(model, "127.0.0.1:8000", "http://x/v1/detectors"),
                       AlertSettings(), clock.monotonic, clock.wall).observe(state("drift", 10),
                                                                               [DriftEvent(0, "drift", 2.0, 1.0)])[0]
        for name, signal, model in (("pht_confidence", "confidence", "digits"), ("ünï", "entropy", "modèle 2"))
    ]
    metrics = Metrics()
    sink = AlertmanagerSink(SinkContext(name="am", type="alertmanager", state_dir=tmp_path, metrics=metrics,
                                        options={"url": alertmanager.url}))
    try:
        await sink.start()
        await sink.send(alerts)
        await wait_until(lambda: len(alertmanager_alerts(alertmanager.url)) == 2, 30)
        found = {item["labels"]["detector"]: item["fingerprint"] for item in alertmanager_alerts(alertmanager.url)}
    finally:
        await sink.close()
        alertmanager.stop()
    assert found == {alert.labels["detector"]: alert.fingerprint for alert in alerts}
    assert all(alert.to_webhook()["fingerprint"] == alert.fingerprint for alert in alerts)


async def test_every_notification_has_its_own_idempotency_key(tmp_path: Path) -> None:
    clock = Clock()
    machine = DetectorAlerts("pht_confidence", "pht", "confidence", SOURCE,
                             AlertSettings(cooldown_seconds=10, renotify_seconds=30, resolve_after_samples=5,
                                           warning_alerts=False), clock.monotonic, clock.wall)
    (first,) = machine.observe(state("drift", 10), [DriftEvent(3, "drift", 2.0, 1.0)])
    clock.t += 30
    (reminder,) = machine.tick(state("drift", 10))
    clock.t += 30
    (second_reminder,) = machine.tick(state("drift", 10))
    machine.observe(state("ok", 20))
    clock.t += 10
    (resolved,) = machine.tick(state("ok", 20))
    notifications = [first, reminder, second_reminder, resolved]
    assert [n.status for n in notifications] == ["firing", "firing", "firing", "resolved"]
    assert len({n.fingerprint for n in notifications}) == 1
    keys = [n.idempotency_key for n in notifications]
    assert len(set(keys)) == 4, keys

    # Every copy (two URLs) and every retry (the first URL answers 503 once) of one
    # notification carries its key.
    flaky, steady = Receiver(), Receiver()
    await flaky.up(), await steady.up()
    flaky.statuses = [503]
    metrics = Metrics()
    sink = WebhookSink(SinkContext(name="hook", type="webhook", state_dir=tmp_path, metrics=metrics,
                                   options={"urls": [flaky.url, steady.url], "backoff_initial_seconds": 0.01,
                                            "backoff_max_seconds": 0.02}))
    await sink.start()
    try:
        await sink.send(notifications)
        await wait_until(lambda: len(flaky.delivered()) == 4 and len(steady.delivered()) == 4)
    finally:
        await sink.close()
        await flaky.down(), await steady.down()
    assert [headers["Idempotency-Key"] for _, _, headers, _ in flaky.requests] == [keys[0], *keys]
    assert [headers["Idempotency-Key"] for _, _, headers, _ in steady.requests] == keys


async def test_alertmanager_refreshes_carry_keys_of_their_own(tmp_path: Path) -> None:
    receiver = Receiver("/api/v2/alerts")
    await receiver.up()
    clock = Clock()
    (alert,) = DetectorAlerts("d", "pht", "confidence", SOURCE, AlertSettings(), clock.monotonic,
                              clock.wall).observe(state("drift", 1), [DriftEvent(0, "drift", 2.0, 1.0)])
    sink = AlertmanagerSink(SinkContext(name="am", type="alertmanager", state_dir=tmp_path, metrics=Metrics(),
                                        options={"url": f"http://127.0.0.1:{receiver.port}",
                                                 "ends_after_seconds": 5, "refresh_seconds": 0.05}))
    await sink.start()
    try:
        await sink.send([alert])
        await wait_until(lambda: len(receiver.requests) >= 3)
    finally:
        await sink.close()
        await receiver.down()
    keys = [headers["Idempotency-Key"] for _, _, headers, _ in receiver.requests]
    assert keys[0] == alert.idempotency_key
    assert len(set(keys)) == len(keys)  # a proxy that drops repeated keys must not drop refreshes


def test_the_default_instance_is_the_scrape_target() -> None:
    from monitord.alerting.episodes import default_instance

    defaults = Settings(_env_file=None)
    target = yaml.safe_load((CONFIGS / "local" / "prometheus.yml").read_text())
    (scrape,) = [job for job in target["scrape_configs"] if job["job_name"] == "monitord"]
    assert default_instance(defaults.http.host, defaults.http.port) in scrape["static_configs"][0]["targets"]
    assert default_instance("127.0.0.1", 8123) == "127.0.0.1:8123"
    assert default_instance("::1", 8123) == "[::1]:8123"
    assert default_instance("0.0.0.0", 8000) == f"{socket.gethostname()}:8000"
    assert default_instance("::", 8000) == f"{socket.gethostname()}:8000"


def restart_settings(receiver_url: str) -> str:
    return f"""
sources = ["http"]
[model]
type = "brightness"
[pipeline]
max_batch_delay = 0.0
[snapshots]
interval_seconds = 0.5
[alerts]
cooldown_seconds = 0.5
resolve_after_samples = 1
warning_alerts = false
renotify_seconds = 0
[[detectors]]
type = "over"
signal = "brightness"
name = "bright"
limit = 0.5
[[sinks]]
type = "webhook"
name = "hook"
urls = ["{receiver_url}"]
backoff_initial_seconds = 0.1
backoff_max_seconds = 0.5
"""


def post_image(daemon: DaemonProcess, level: int) -> None:
    request = urllib.request.Request(daemon.url + "/v1/predict", data=png(level), method="POST",
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notified(receiver: WebhookReceiver, status: str, time_field: str, since: str) -> bool:
    """Whether an alert of ``status`` with ``time_field`` at or after ``since`` arrived."""
    return any(alert["status"] == status and alert[time_field] >= since
               for body in receiver.bodies() for alert in body["alerts"])


def detector_samples(daemon: DaemonProcess) -> int:
    (detector,) = get_json(daemon.url + "/v1/detectors")["detectors"]
    return detector["samples"]


def test_an_episode_continues_across_a_restart_on_another_port(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    env = {**install_testplugin(tmp_path / "site"), "MONITORD_LOAD_PLUGINS": "monitord-testplugin"}
    first_port, second_port = free_port(), free_port()
    first = DaemonProcess(tmp_path, first_port, extra_settings=restart_settings(receiver.url), env=env)
    second = DaemonProcess(tmp_path, second_port, extra_settings=restart_settings(receiver.url), env=env)
    try:
        first.start()
        post_image(first, 250)
        wait_for(lambda: len(receiver.bodies()) == 1, 15, message="the firing alert")
        assert first.terminate() == 0

        second.start()  # same state_dir, another port
        post_image(second, 250)  # the detector (restored at drift) stays there: the same episode
        wait_for(lambda: detector_samples(second) == 2, 15, message="the detector to take the image")
        dark_at = now()
        post_image(second, 5)
        wait_for(lambda: notified(receiver, "resolved", "endsAt", dark_at), 15, message="the resolved alert")
        bright_at = now()
        post_image(second, 250)  # a new episode, under this run's instance
        wait_for(lambda: notified(receiver, "firing", "startsAt", bright_at), 15, message="the second episode")
        assert second.terminate() == 0
    finally:
        first.kill()
        second.kill()
        receiver.close()
    alerts = [body["alerts"][0] for body in receiver.bodies()]
    assert [alert["status"] for alert in alerts] == ["firing", "resolved", "firing"]
    assert alerts[0]["fingerprint"] == alerts[1]["fingerprint"] and alerts[0]["labels"] == alerts[1]["labels"]
    assert alerts[0]["startsAt"] == alerts[1]["startsAt"]
    assert alerts[0]["labels"]["instance"] == f"127.0.0.1:{first_port}"
    assert alerts[2]["labels"]["instance"] == f"127.0.0.1:{second_port}"
    assert "no longer configured" not in second.log()


def post_alerts(url: str, alerts: list[dict]) -> None:
    request = urllib.request.Request(url + "/api/v2/alerts", data=json.dumps(alerts).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


def test_one_replicas_drift_does_not_mute_another_replicas_warning(tmp_path: Path) -> None:
    config = yaml.safe_load((CONFIGS / "alertmanager.yml").read_text())
    receiver = WebhookReceiver()
    for route_receiver in config["receivers"]:
        for webhook in route_receiver.get("webhook_configs", []):
            webhook["url"] = receiver.url
    alertmanager = start_alertmanager(tmp_path, yaml.safe_dump(config))
    common = {"detector": "pht_confidence", "type": "pht", "signal": "confidence", "model": "digits"}
    now = datetime.now(timezone.utc)
    ends = datetime.fromtimestamp(now.timestamp() + 600, timezone.utc).isoformat()

    def alert(alertname: str, severity: str, instance: str) -> dict:
        return {"labels": {**common, "alertname": alertname, "severity": severity, "instance": instance},
                "startsAt": now.isoformat(), "endsAt": ends}

    try:
        post_alerts(alertmanager.url, [
            alert("MonitordDrift", "critical", "replica-a:8000"),
            alert("MonitordDriftWarning", "warning", "replica-a:8000"),
            alert("MonitordDriftWarning", "warning", "replica-b:8000"),
        ])

        def warnings() -> dict[str, dict]:
            return {item["labels"]["instance"]: item["status"] for item in alertmanager_alerts(alertmanager.url)
                    if item["labels"]["alertname"] == "MonitordDriftWarning"}

        wait_for(lambda: warnings().get("replica-a:8000", {}).get("inhibitedBy"), 30,
                 message="replica a's warning to be inhibited by its drift")
        status = warnings()
    finally:
        alertmanager.stop()
        receiver.close()
    assert status["replica-a:8000"]["state"] == "suppressed"
    assert status["replica-b:8000"]["inhibitedBy"] == [] and status["replica-b:8000"]["state"] == "active"
