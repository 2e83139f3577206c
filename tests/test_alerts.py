"""The alert state machine on a fake clock: episodes, cool-down, re-notify, labels."""

from __future__ import annotations

import pytest

from monitord.alerting.alert import ZERO_TIME, Alert, fingerprint
from monitord.alerting.episodes import AlertSource, DetectorAlerts
from monitord.detectors import DetectorState, DriftEvent
from monitord.settings import AlertSettings
from fake_clock import Clock

SOURCE = AlertSource(model="digits", instance="host:8000", generator_url="http://host:8000/v1/detectors")


def state(level: str, statistic: float = 1.0, samples: int = 10) -> DetectorState:
    return DetectorState(statistic=statistic, threshold=0.5, p_value=None, level=level, samples=samples,
                         warning_threshold=0.3)


def machine(clock: Clock, **settings) -> DetectorAlerts:
    defaults = {"cooldown_seconds": 10, "renotify_seconds": 0, "resolve_after_samples": 5}
    return DetectorAlerts("pht_confidence", "pht", "confidence", SOURCE, AlertSettings(**{**defaults, **settings}),
                          clock.monotonic, clock.wall)


DRIFT = [DriftEvent(3, "drift", 0.93, 0.5)]


def test_one_episode_despite_flapping_then_resolved_after_quiet_samples() -> None:
    clock = Clock()
    alerts = machine(clock, warning_alerts=False, resolve_after_samples=25)
    samples = 10
    # PHT-like: raises drift and restarts at once, so the level after the batch is ok.
    (fired,) = alerts.observe(state("ok", samples=samples), DRIFT)
    assert fired.status == "firing" and fired.labels["severity"] == "critical"
    assert fired.labels["alertname"] == "MonitordDrift"
    for _ in range(20):  # re-fires every 20 samples (5 s): never 25 samples without
        clock.t += 5
        samples += 20
        assert alerts.observe(state("ok", samples=samples), DRIFT) == []
        clock.t += 0.5
        assert alerts.tick(state("ok", samples=samples)) == []
    clock.t += 600  # ten minutes without images: time alone resolves nothing
    assert alerts.tick(state("ok", samples=samples)) == []
    samples += 24
    assert alerts.observe(state("ok", samples=samples)) == []
    samples += 1
    (resolved,) = alerts.observe(state("ok", samples=samples))
    assert resolved.status == "resolved" and resolved.fingerprint == fired.fingerprint
    assert resolved.starts_at == fired.starts_at and resolved.ends_at is not None
    assert resolved.ends_at > resolved.starts_at
    assert resolved.to_webhook()["endsAt"].endswith("Z") and resolved.to_webhook()["endsAt"] != ZERO_TIME
    assert alerts.tick(state("ok", samples=samples)) == []
    # a new episode afterwards is a new alert (same labels, later startsAt)
    clock.t += 1
    (again,) = alerts.observe(state("drift", samples=samples + 1), [])
    assert again.fingerprint == fired.fingerprint and again.starts_at > fired.starts_at


def test_a_detector_that_stays_at_drift_without_traffic_keeps_firing() -> None:
    clock = Clock()
    alerts = machine(clock)
    assert len(alerts.observe(state("drift"), DRIFT)) == 1
    clock.t += 1000
    assert alerts.tick(state("drift")) == []  # still at drift: no resolve
    clock.t += 5
    assert alerts.observe(state("ok", samples=15), []) == []
    clock.t += 10
    assert [a.status for a in alerts.tick(state("ok", samples=15))] == ["resolved"]


def test_renotify_resends_the_same_alert_and_zero_never_does() -> None:
    clock = Clock()
    alerts = machine(clock, renotify_seconds=30, warning_alerts=False)
    (first,) = alerts.observe(state("drift"), DRIFT)
    clock.t += 29
    assert alerts.tick(state("drift")) == []
    clock.t += 1
    (again,) = alerts.tick(state("drift"))
    assert again == first and again.idempotency_key != first.idempotency_key  # a reminder gets through
    clock.t += 30
    assert len(alerts.tick(state("drift"))) == 1

    quiet = machine(clock, renotify_seconds=0)
    quiet.observe(state("drift"), DRIFT)
    clock.t += 100_000
    assert quiet.tick(state("drift")) == []


@pytest.mark.parametrize("enabled", [True, False])
def test_warning_alerts_on_and_off(enabled: bool) -> None:
    clock = Clock()
    alerts = machine(clock, warning_alerts=enabled)
    fired = alerts.observe(state("warning", 0.4), [DriftEvent(0, "warning", 0.4, 0.3)])
    if not enabled:
        assert fired == []
        assert [a.labels["severity"] for a in alerts.observe(state("drift"), DRIFT)] == ["critical"]
        return
    (warning,) = fired
    assert warning.labels["alertname"] == "MonitordDriftWarning" and warning.labels["severity"] == "warning"
    assert warning.annotations["threshold"] == "0.3" and warning.annotations["statistic"] == "0.4"
    # drift opens the critical alert; the warning episode lasts while at drift
    clock.t += 1
    (critical,) = alerts.observe(state("drift"), DRIFT)
    assert critical.labels["severity"] == "critical" and critical.fingerprint != warning.fingerprint
    clock.t += 50
    assert alerts.tick(state("drift")) == []
    alerts.observe(state("ok", samples=15), [])
    clock.t += 10
    assert sorted(a.labels["severity"] for a in alerts.tick(state("ok", samples=15))) == ["critical", "warning"]


def test_a_jump_straight_to_drift_raises_no_warning_alert() -> None:
    clock = Clock()
    assert [a.labels["severity"] for a in machine(clock).observe(state("drift"), DRIFT)] == ["critical"]


def test_labels_annotations_and_fingerprint_are_stable() -> None:
    clock = Clock()
    (alert,) = machine(clock).observe(state("ok"), DRIFT)
    assert alert.labels == {
        "alertname": "MonitordDrift", "detector": "pht_confidence", "type": "pht", "signal": "confidence",
        "model": "digits", "instance": "host:8000", "severity": "critical",
    }
    assert alert.annotations["statistic"] == "0.93" and alert.annotations["threshold"] == "0.5"
    assert "pht_confidence" in alert.annotations["summary"] and "confidence" in alert.annotations["summary"]
    assert "0.93" in alert.annotations["summary"] and alert.annotations["description"]
    assert alert.generator_url == "http://host:8000/v1/detectors"
    # the fingerprint depends on the labelset only, not its order, nor the time
    assert alert.fingerprint == fingerprint(dict(reversed(list(alert.labels.items()))))
    assert len(alert.fingerprint) == 16 and int(alert.fingerprint, 16) >= 0
    clock.t += 500
    (later,) = machine(clock).observe(state("drift", 7.0), [])
    assert later.fingerprint == alert.fingerprint
    assert fingerprint({**alert.labels, "detector": "other"}) != alert.fingerprint
    assert Alert.from_state(alert.to_state()) == alert
    webhook = alert.to_webhook()
    assert webhook["endsAt"] == ZERO_TIME and webhook["status"] == "firing"
    assert webhook["startsAt"] == "2023-11-14T22:30:00.000Z"
    assert alert.idempotency_key == f"{alert.fingerprint}-firing-2023-11-14T22:30:00.000Z-2023-11-14T22:30:00.000Z"
