"""The whole stack with the real servers: monitord → Prometheus (shipped rules) → Alertmanager
(shipped routing) → a webhook receiver; monitord's own webhook and alertmanager sinks beside it;
and every Grafana panel's PromQL evaluated against that Prometheus.

The drift is made exactly: the test plugin's ``brightness`` model and ``over`` detector reach
drift on bright images and fall back on dark ones.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from daemon_process import DaemonProcess, free_port, wait_for
from grafana_dashboard import panel_queries
from installed_plugin import install_testplugin
from monitord_testplugin import png
from servers import WebhookReceiver, prometheus_query, start_alertmanager, start_prometheus

CONFIGS = Path(__file__).parents[1] / "configs"


def alertmanager_config(receiver_url: str) -> str:
    """The shipped alertmanager.yml, its webhook pointed at the test receiver, its waits shortened."""
    config = yaml.safe_load((CONFIGS / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = receiver_url
            webhook.pop("url_file", None)

    def shorten(route: dict[str, Any]) -> None:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return yaml.safe_dump(config)


def prometheus_config(daemon_port: int, alertmanager_port: int) -> str:
    """Scrapes and evaluates every second, with the shipped rules and the real Alertmanager."""
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(CONFIGS / "prometheus_rules.yaml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": "monitord", "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"]}]}],
    })


def daemon_settings(webhook_url: str, alertmanager_url: str) -> str:
    return f"""
sources = ["http"]
[model]
type = "brightness"
[alerts]
cooldown_seconds = 3
resolve_after_samples = 3
[[detectors]]
type = "over"
signal = "brightness"
name = "bright"
limit = 0.5
window = 3
[[detectors]]
type = "over"
signal = "error"
name = "errors"
limit = 1.0
[[sinks]]
type = "log"
[[sinks]]
type = "webhook"
urls = ["{webhook_url}"]
backoff_initial_seconds = 0.2
backoff_max_seconds = 1
[[sinks]]
type = "alertmanager"
url = "{alertmanager_url}"
ends_after_seconds = 20
refresh_seconds = 2
backoff_initial_seconds = 0.2
backoff_max_seconds = 1
"""


def post_images(daemon: DaemonProcess, level: int, count: int, prefix: str) -> None:
    for index in range(count):
        request = urllib.request.Request(
            f"{daemon.url}/v1/predict?id={prefix}{index}", data=png(level), headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


def alerts_in(bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(alertname, status)`` of every alert in webhook payloads (version 4)."""
    return [(alert["labels"]["alertname"], alert["status"]) for body in bodies for alert in body["alerts"]]


def eventually(predicate: Callable[[], bool], timeout: float, what: str, *logs: Callable[[], str]) -> None:
    try:
        wait_for(predicate, timeout=timeout, interval=0.25, message=what)
    except AssertionError as error:
        raise AssertionError(f"{error}\n" + "\n".join(log()[-3000:] for log in logs)) from None


@pytest.fixture
def stack(tmp_path: Path):
    direct = WebhookReceiver()
    routed = WebhookReceiver()
    started: list[Any] = []
    try:
        alertmanager = start_alertmanager(tmp_path, alertmanager_config(routed.url))
        started.append(alertmanager)
        daemon = DaemonProcess(tmp_path, free_port(), extra_settings=daemon_settings(direct.url, alertmanager.url),
                               env=install_testplugin(tmp_path / "site"))
        daemon.start()
        started.append(daemon)
        prometheus = start_prometheus(tmp_path, prometheus_config(daemon.port, alertmanager.port))
        started.append(prometheus)
        yield daemon, prometheus, alertmanager, direct, routed
    finally:
        for server in reversed(started):
            server.kill() if isinstance(server, DaemonProcess) else server.stop()
        direct.close()
        routed.close()


def test_drift_alert_travels_the_whole_chain_and_resolves(stack) -> None:
    daemon, prometheus, alertmanager, direct, routed = stack
    logs = (daemon.log, prometheus.log, alertmanager.log)
    # Traffic and labels first, so every series the dashboard reads exists.
    post_images(daemon, 10, 6, "dark")
    request = urllib.request.Request(f"{daemon.url}/v1/feedback", data=json.dumps(
        [{"id": "dark0", "label": "dark"}, {"id": "dark1", "label": "bright"}]).encode(),
        headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()

    post_images(daemon, 250, 6, "bright")  # the detector reaches drift
    eventually(lambda: ("MonitordDrift", "firing") in alerts_in(direct.bodies()), 30,
               "monitord's webhook sink to deliver the firing alert", *logs)
    eventually(lambda: ("MonitordDrift", "firing") in alerts_in(routed.bodies()), 30,
               "monitord's alertmanager sink → Alertmanager → receiver", *logs)
    eventually(lambda: ("MonitordDriftDetected", "firing") in alerts_in(routed.bodies()), 120,
               "Prometheus's rule to fire and Alertmanager to route it", *logs)
    assert {a["labels"]["detector"] for body in direct.bodies() for a in body["alerts"]} == {"bright"}
    direct_alert = direct.bodies()[0]["alerts"][0]
    assert direct_alert["labels"]["severity"] == "critical" and direct_alert["labels"]["signal"] == "brightness"
    assert {body["version"] for body in direct.bodies()} == {"4"}

    # Every Grafana panel's PromQL parses and returns data from this Prometheus.
    empty, failed = [], []
    for title, expression in panel_queries():
        try:
            result = prometheus_query(prometheus, expression)
        except urllib.error.HTTPError as error:  # 400: the PromQL does not parse
            result = {"status": "error", "error": error.read().decode(errors="replace")}
        if result["status"] != "success":
            failed.append((title, expression, result))
        elif not result["data"]["result"]:
            empty.append((title, expression))
    assert not failed, failed
    assert not empty, f"panels without data: {empty}"

    post_images(daemon, 10, 6, "calm")  # back below the level: resolves after the cool-down
    eventually(lambda: ("MonitordDrift", "resolved") in alerts_in(direct.bodies()), 30,
               "the webhook sink's resolved notification", *logs)
    eventually(lambda: ("MonitordDrift", "resolved") in alerts_in(routed.bodies()), 30,
               "Alertmanager's resolved notification for monitord's alert", *logs)
    eventually(lambda: ("MonitordDriftDetected", "resolved") in alerts_in(routed.bodies()), 120,
               "Prometheus's drift alert to resolve", *logs)
    assert daemon.metric("monitord_alerts_total", sink="webhook", outcome="delivered") >= 2
    assert daemon.metric("monitord_alerts_total", sink="alertmanager", outcome="delivered") >= 2
    fingerprints = {a["fingerprint"] for body in direct.bodies() for a in body["alerts"]
                    if a["labels"]["alertname"] == "MonitordDrift"}
    assert len(fingerprints) == 1
