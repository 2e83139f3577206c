"""Alert latency (issue 15): from a drift's start and end to the notifications a receiver gets,
with the shipped Prometheus intervals, rules and Alertmanager routing.

The real daemon (the tests' ``brightness`` model and ``over`` detector, so one bright image
is exactly one drift and one dark image ends it), Prometheus with the global intervals of
configs/prometheus.yml (15 s) and configs/prometheus_rules.yaml, Alertmanager with
configs/alertmanager.yml (only the receiver's URL replaced), and the daemon's own
``webhook`` (direct) and ``alertmanager`` sinks with the default ``alerts.cooldown_seconds``.
Prints, per path, the seconds from the drifting image to the firing notification and from
the calming image to the resolved one. Needs the Debian packages prometheus and
prometheus-alertmanager; takes about 8 minutes, nearly all of it waiting. From the
repository root::

    .venv/bin/python benchmarks/alert_latency.py
"""

from __future__ import annotations

import datetime as dt
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "testplugin")]

from daemon_process import DaemonProcess, free_port, wait_for  # noqa: E402
from installed_plugin import install_testplugin  # noqa: E402
from monitord_testplugin import png  # noqa: E402
from servers import WebhookReceiver, prometheus_query, start_alertmanager, start_prometheus  # noqa: E402

CONFIGS = REPO / "configs"
PATHS = {
    "daemon → webhook sink (MonitordDrift)": ("direct", "MonitordDrift"),
    "daemon → alertmanager sink → Alertmanager (MonitordDrift)": ("routed", "MonitordDrift"),
    "Prometheus rule → Alertmanager (MonitordDriftDetected)": ("routed", "MonitordDriftDetected"),
}


def alertmanager_config(receiver_url: str) -> str:
    config = yaml.safe_load((CONFIGS / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = receiver_url
    return yaml.safe_dump(config)


def prometheus_config(daemon_port: int, alertmanager_port: int) -> str:
    shipped = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    return yaml.safe_dump({
        "global": shipped["global"],
        "rule_files": [str(CONFIGS / "prometheus_rules.yaml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": "monitord", "static_configs": [{"targets": [f"127.0.0.1:{daemon_port}"]}]}],
    })


def daemon_settings(webhook_url: str, alertmanager_url: str) -> str:
    return f"""
sources = ["http"]
[model]
type = "brightness"
[[detectors]]
type = "over"
signal = "brightness"
name = "bright"
limit = 0.5
[[sinks]]
type = "webhook"
urls = ["{webhook_url}"]
[[sinks]]
type = "alertmanager"
url = "{alertmanager_url}"
"""


def first_seen(receivers: dict[str, WebhookReceiver], status: str, start: float, timeout: float) -> dict[str, float]:
    """Seconds from ``start`` until each path's notification with ``status`` arrived."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(PATHS) and time.monotonic() < deadline:
        for path, (receiver, alertname) in PATHS.items():
            if path not in seen and any(alert["labels"]["alertname"] == alertname and alert["status"] == status
                                        for body in receivers[receiver].bodies() for alert in body["alerts"]):
                seen[path] = time.monotonic() - start
        time.sleep(0.2)
    return seen


def post(daemon: DaemonProcess, level: int) -> None:
    request = urllib.request.Request(daemon.url + "/v1/predict", data=png(level), headers={"Content-Type": "image/png"})
    urllib.request.urlopen(request, timeout=10).close()


def main() -> int:
    receivers = {"direct": WebhookReceiver(), "routed": WebhookReceiver()}
    started: list = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        try:
            alertmanager = start_alertmanager(workdir, alertmanager_config(receivers["routed"].url))
            started.append(alertmanager)
            daemon = DaemonProcess(workdir, free_port(), extra_settings=daemon_settings(
                receivers["direct"].url, alertmanager.url), env=install_testplugin(workdir / "site"))
            daemon.start()
            started.append(daemon)
            prometheus = start_prometheus(workdir, prometheus_config(daemon.port, alertmanager.port))
            started.append(prometheus)
            wait_for(lambda: prometheus_query(prometheus, 'up{job="monitord"} == 1')["data"]["result"], timeout=120,
                     message="Prometheus's first scrape")
            time.sleep(20)  # a second scrape, so the counters have a sample at 0

            start = time.monotonic()
            post(daemon, 250)
            firing = first_seen(receivers, "firing", start, timeout=300)
            start = time.monotonic()
            post(daemon, 10)
            resolved = first_seen(receivers, "resolved", start, timeout=600)
        finally:
            for server in reversed(started):
                server.kill() if isinstance(server, DaemonProcess) else server.stop()
            for receiver in receivers.values():
                receiver.close()
    print(f"{platform.node()}, {platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print("| Path | Firing after the drift starts | Resolved after the drift stops |")
    print("|---|---|---|")
    for path in PATHS:
        cells = [f"{seen[path]:.1f} s" if path in seen else "not seen" for seen in (firing, resolved)]
        print(f"| {path} | {cells[0]} | {cells[1]} |")
    return 0 if len(firing) == len(resolved) == len(PATHS) else 1


if __name__ == "__main__":
    sys.exit(main())
