"""State files stay private and spooled notifications hold no credentials.

Every file the daemon writes in ``state_dir`` is 0600 and every folder 0700, whatever the
umask; a spooled notification names its URL by its place in the sink's ``urls`` and the
URL (with the credentials in it) is taken from the settings when it is delivered.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest

from monitord.alerting.alert import Alert
from monitord.alerting.sinks import SinkContext
from monitord.builtin.webhook_sink import WebhookSink
from monitord.metrics import Metrics

from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import drop_atomically
from installed_plugin import install_testplugin
from monitord_testplugin import png
from servers import WebhookReceiver
from test_alert_sinks import Receiver, count, wait_until
from test_alert_identity import detector_samples, post_image

PASSWORD = "pw-Zq81-secret"
API_KEY = "key-Xv42-secret"


def with_credentials(url: str, password: str = PASSWORD, key: str = API_KEY) -> str:
    return url.replace("http://", f"http://admin:{password}@") + f"?apikey={key}"


def modes(root: Path) -> dict[str, str]:
    """``oct`` permission bits of ``root`` and of everything under it, by relative path."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def assert_private(root: Path) -> None:
    wrong = {name: mode for name, mode in modes(root).items()
             if mode != (oct(0o700) if (root / name).is_dir() else oct(0o600))}
    assert not wrong, f"not private (files 0600, folders 0700): {wrong}"


def daemon_settings(url: str) -> str:
    return f"""
sources = ["http", "folder"]
[model]
type = "brightness"
[pipeline]
max_batch_delay = 0.0
[folder]
settle_seconds = 0.0
[snapshots]
interval_seconds = 0.3
[predictions_log]
max_bytes = 300
backups = 2
[alerts]
cooldown_seconds = 0.2
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
urls = ["{url}"]
backoff_initial_seconds = 0.1
backoff_max_seconds = 0.5
"""


def test_state_files_are_private_and_hold_no_credentials(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    receiver.stop()  # down: the notification waits in the spool
    env = {**install_testplugin(tmp_path / "site"), "MONITORD_LOAD_PLUGINS": "monitord-testplugin"}
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=daemon_settings(with_credentials(receiver.url)),
                           env=env)
    state = daemon.state
    spool = state / "spool" / "hook"
    previous = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        daemon.start()
    finally:
        os.umask(previous)
    try:
        post_image(daemon, 250)  # drift: a firing notification, spooled
        for index in range(3):
            drop_atomically(daemon.inbox, f"bright/{index}.png", png(240))  # the folder ledger
        for _ in range(4):
            post_image(daemon, 250)  # rotates predictions.jsonl
        expected = ["alerts.json", "detectors.json", "predictions.jsonl", "predictions.jsonl.1",
                    "ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"]
        wait_for(lambda: all((state / name).exists() for name in expected) and any(spool.glob("*.json"))
                 and detector_samples(daemon) == 8, 30, message=f"{expected} and a spool file")
        assert_private(state)  # while running: SQLite's -wal and -shm files too
        assert daemon.terminate() == 0
        assert_private(state)

        found = [path for path in state.rglob("*") if path.is_file()]
        for path in found:
            data = path.read_bytes()
            assert PASSWORD.encode() not in data and API_KEY.encode() not in data, path
            assert b"admin:" not in data, path
        (entry,) = [json.loads(path.read_text()) for path in spool.glob("*.json")]
        assert entry["url_index"] == 0 and "url" not in entry
        assert PASSWORD not in daemon.log() and API_KEY not in daemon.log()

        # The next start delivers it to the URL from the settings, credentials included.
        receiver.start()
        daemon.start()
        wait_for(lambda: receiver.bodies(), 15, message="the spooled notification")
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
        receiver.close()
    assert receiver.bodies()[0]["status"] == "firing"
    assert receiver.paths[0] == f"/hook?apikey={API_KEY}"
    assert receiver.headers[0]["Authorization"] == "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def test_an_existing_state_dir_open_to_others_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from monitord.state_files import prepare_state_dir

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    caplog.set_level(logging.INFO, logger="monitord.state")
    prepare_state_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "0755" in caplog.text and "0700" in caplog.text and str(state) in caplog.text
    caplog.clear()
    prepare_state_dir(state)  # already private: nothing to say
    assert caplog.text == ""
    fresh = tmp_path / "new" / "state"
    prepare_state_dir(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


# -- the spool -----------------------------------------------------------------------------


def alert(detector: str) -> Alert:
    started = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    return Alert(labels={"alertname": "MonitordDrift", "detector": detector, "severity": "critical"},
                 annotations={}, starts_at=started, generator_url="http://h:1/v1/detectors")


def sink(tmp_path: Path, metrics: Metrics, urls: list[str]) -> WebhookSink:
    return WebhookSink(SinkContext(name="hook", type="webhook", state_dir=tmp_path, metrics=metrics,
                                   options={"urls": urls, "backoff_initial_seconds": 0.05,
                                            "backoff_max_seconds": 0.1}))


def spooled(tmp_path: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((tmp_path / "spool" / "hook").glob("*.json"))]


async def test_a_spool_entry_names_its_url_by_place_and_takes_the_url_of_the_day(tmp_path: Path) -> None:
    first, second = Receiver(), Receiver()  # both down
    metrics = Metrics()
    old = sink(tmp_path, metrics, [with_credentials(first.url), with_credentials(second.url)])
    await old.start()
    await old.send([alert("a")])
    await wait_until(lambda: count(metrics, "hook", "failed") >= 2)
    await old.close()
    entries = spooled(tmp_path)
    assert sorted(entry["url_index"] for entry in entries) == [0, 1]
    assert all(set(entry) == {"url_index", "headers", "body"} for entry in entries)
    assert all(PASSWORD not in json.dumps(entry) and API_KEY not in json.dumps(entry) for entry in entries)
    assert_private(tmp_path / "spool")

    # The credentials were rotated between the runs: delivery uses the new ones.
    await first.up(), await second.up()
    metrics = Metrics()
    new = sink(tmp_path, metrics, [with_credentials(first.url, "rotated-pw"), with_credentials(second.url, "pw-2")])
    await new.start()
    try:
        await wait_until(lambda: first.delivered() and second.delivered())
    finally:
        await new.close()
        await first.down(), await second.down()
    assert first.requests[0][2]["Authorization"] == "Basic " + base64.b64encode(b"admin:rotated-pw").decode()
    assert second.requests[0][2]["Authorization"] == "Basic " + base64.b64encode(b"admin:pw-2").decode()
    assert spooled(tmp_path) == []


async def test_a_spooled_notification_for_a_url_removed_since_is_logged_and_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kept, removed = Receiver(), Receiver()
    metrics = Metrics()
    old = sink(tmp_path, metrics, [kept.url, with_credentials(removed.url)])
    await old.start()
    await old.send([alert("a")])
    await wait_until(lambda: count(metrics, "hook", "failed") >= 2)
    await old.close()

    await kept.up()
    metrics = Metrics()
    caplog.set_level(logging.INFO, logger="monitord.alerts")
    new = sink(tmp_path, metrics, [kept.url])  # the second URL was taken out of the settings
    await new.start()
    try:
        await wait_until(lambda: kept.delivered())
    finally:
        await new.close()
        await kept.down()
    assert count(metrics, "hook", "dropped") == 1 and count(metrics, "hook", "delivered") == 1
    assert "URL number 2" in caplog.text and "1 URL" in caplog.text and PASSWORD not in caplog.text
    assert spooled(tmp_path) == []


async def test_a_spool_file_from_before_holding_the_url_is_migrated_or_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver()
    folder = tmp_path / "spool" / "hook"
    folder.mkdir(parents=True)
    configured = with_credentials(receiver.url)
    for sequence, url in ((1, configured), (2, "http://admin:old-pw@gone.example:9/hook")):
        body = json.dumps({"alerts": [alert(f"n{sequence}").to_webhook()]})
        (folder / f"{sequence:016d}.json").write_text(json.dumps(
            {"url": url, "headers": {"Idempotency-Key": f"k{sequence}"}, "body": body}))
    metrics = Metrics()
    caplog.set_level(logging.INFO, logger="monitord.alerts")
    webhook = sink(tmp_path, metrics, [configured])
    await webhook.start()  # the receiver is down: what is spooled stays
    try:
        await wait_until(lambda: count(metrics, "hook", "failed") >= 1)
        (migrated,) = spooled(tmp_path)
        assert migrated["url_index"] == 0 and "url" not in migrated
        assert migrated["headers"] == {"Idempotency-Key": "k1"}
        assert count(metrics, "hook", "dropped") == 1  # the URL no longer configured
        assert "gone.example" in caplog.text and "old-pw" not in caplog.text
        assert_private(tmp_path / "spool")
        await receiver.up()
        await wait_until(lambda: receiver.delivered())
    finally:
        await webhook.close()
        await receiver.down()
    assert receiver.delivered()[0]["alerts"][0]["labels"]["detector"] == "n1"
    assert receiver.requests[0][2]["Idempotency-Key"] == "k1"
    assert spooled(tmp_path) == []
