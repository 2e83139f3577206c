"""Acceptance: the real daemon's webhook sink through a receiver outage and two restarts.

The test plugin's ``brightness`` model and ``over`` detector make drift exact: a bright
image (mean pixel 250/255) puts the detector at drift, a dark one brings it back. While
the receiver is down for 20 s, one episode resolves, another starts, the daemon stops
gracefully (SIGTERM) and restarts, a third episode starts, the daemon is killed (-9) and
restarts. Once the receiver is back every notification, firing and resolved, arrives in
order, signed; copies only ever repeat a notification (same fingerprint, status, startsAt).
"""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

from daemon_process import DaemonProcess, free_port, wait_for
from installed_plugin import install_testplugin
from monitord_testplugin import png
from servers import WebhookReceiver

SECRET = "acceptance-secret"
OUTAGE_SECONDS = 20.0


def settings(receiver_url: str) -> str:
    return f"""
sources = ["http"]
[model]
type = "brightness"
[pipeline]
max_batch_delay = 0.0
shutdown_timeout = 5.0
[snapshots]
interval_seconds = 0.5
[alerts]
cooldown_seconds = 2.0
resolve_after_samples = 1
warning_alerts = false
renotify_seconds = 0
[[detectors]]
type = "over"
signal = "brightness"
name = "bright"
limit = 0.5
[[sinks]]
type = "log"
[[sinks]]
type = "webhook"
name = "hook"
urls = ["{receiver_url}"]
secret = "{SECRET}"
timeout_seconds = 2.0
backoff_initial_seconds = 0.2
backoff_max_seconds = 1.0
"""


def post_image(daemon: DaemonProcess, level: int) -> None:
    request = urllib.request.Request(daemon.url + "/v1/predict", data=png(level), method="POST",
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def spooled(daemon: DaemonProcess) -> int:
    return len(list((daemon.state / "spool" / "hook").glob("*.json")))


def test_every_notification_survives_a_receiver_outage_and_restarts(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    env = {**install_testplugin(tmp_path / "site"), "MONITORD_LOAD_PLUGINS": "monitord-testplugin"}
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=settings(receiver.url), env=env)
    try:
        daemon.start()
        assert daemon.metric("monitord_alerts_total", sink="hook", outcome="delivered") == 0
        assert daemon.metric("monitord_alert_spool_depth", sink="hook") == 0

        # Episode 1 fires while the receiver is up.
        post_image(daemon, 250)
        wait_for(lambda: len(receiver.bodies()) == 1, 60, message="the first firing alert")

        receiver.stop()
        down_at = time.monotonic()
        post_image(daemon, 5)  # episode 1 resolves after the 2 s cool-down: spooled
        wait_for(lambda: spooled(daemon) == 1, 60, message="the resolved alert in the spool")
        post_image(daemon, 250)  # episode 2 fires: spooled
        wait_for(lambda: spooled(daemon) == 2, 60, message="episode 2 in the spool")
        assert daemon.metric("monitord_alerts_total", sink="hook", outcome="failed") >= 1

        assert daemon.terminate() == 0  # graceful restart: nothing resolves on shutdown
        assert spooled(daemon) == 2
        daemon.start()
        # The detector continues from its snapshot, still at drift: episode 2 (reopened from
        # alerts.json) stays open until the detector comes back to ok.
        time.sleep(3.0)  # longer than the cool-down
        assert spooled(daemon) == 2
        post_image(daemon, 5)
        wait_for(lambda: spooled(daemon) == 3, 60, message="episode 2 resolved after the restart")
        post_image(daemon, 250)  # episode 3 fires
        wait_for(lambda: spooled(daemon) == 4, 60, message="episode 3 in the spool")

        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(10)
        daemon.start()
        post_image(daemon, 5)
        wait_for(lambda: spooled(daemon) == 5, 60, message="episode 3 resolved after kill -9")
        assert receiver.bodies() == [receiver.bodies()[0]]  # nothing got through the outage

        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        receiver.start()
        up_at = time.monotonic()
        wait_for(lambda: spooled(daemon) == 0 and len(receiver.bodies()) >= 6, 60,
                 message="every notification after the outage")
        recovery = time.monotonic() - up_at
        print(f"outage {up_at - down_at:.1f} s; all 5 spooled notifications delivered {recovery:.2f} s after recovery")
        assert daemon.metric("monitord_alert_spool_depth", sink="hook") == 0
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        receiver.close()

    bodies, headers = receiver.bodies(), receiver.headers
    notifications = [(b["alerts"][0]["fingerprint"], b["status"], b["alerts"][0]["startsAt"]) for b in bodies]
    # Exactly the six notifications, in order; any copy would repeat one of them exactly
    # (the same body under the same Idempotency-Key).
    unique = list(dict.fromkeys(notifications))
    assert [status for _, status, _ in unique] == ["firing", "resolved"] * 3
    starts = [starts_at for _, _, starts_at in unique]
    assert starts[0] == starts[1] and starts[2] == starts[3] and starts[4] == starts[5]
    assert starts[0] < starts[2] < starts[4]
    assert len({fp for fp, _, _ in notifications}) == 1  # one detector, one labelset
    keys = [header["Idempotency-Key"] for header in headers]
    assert len(set(keys)) == len(unique)
    for key, body in zip(keys, bodies):
        assert body == bodies[keys.index(key)]  # a copy repeats its notification exactly
    for body, header, (fp, status, starts_at) in zip(bodies, headers, notifications):
        assert header["Idempotency-Key"].startswith(f"{fp}-{status}-{starts_at}-")
        alert = body["alerts"][0]
        assert alert["labels"]["alertname"] == "MonitordDrift" and alert["labels"]["detector"] == "bright"
        assert alert["labels"]["model"] == "brightness" and body["receiver"] == "hook"
        assert (alert["endsAt"] == "0001-01-01T00:00:00Z") == (status == "firing")
        # (the HMAC itself is checked on the raw body in test_alert_sinks.py)
        assert header["X-Monitord-Signature"].startswith("sha256=")
        assert len(header["X-Monitord-Signature"]) == len("sha256=") + 64
    log = daemon.log()
    assert SECRET not in log
    assert log.count("alert firing alertname=MonitordDrift") == 3
