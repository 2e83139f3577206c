"""The shipped Grafana provisioning and dashboard: valid, fixed uids, every panel queries the
provisioned datasource. That every panel's PromQL parses and returns data from a real
Prometheus is proven in test_observability_chain.py; that the drift-events panel shows a
detector's first event, here with a real daemon and Prometheus."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from daemon_process import DaemonProcess, free_port, wait_for
from grafana_dashboard import DASHBOARD, load_dashboard, panel_queries, panels, substitute
from installed_plugin import install_testplugin
from monitord_testplugin import png
from servers import prometheus_query, start_prometheus

GRAFANA = Path(__file__).parents[1] / "configs" / "grafana"
UID = "monitord-prometheus"


def test_datasource_provisioning_has_the_fixed_uid() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [(UID, "prometheus", "http://prometheus:9090")]


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/monitord.yml").read_text())["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    # ops/docker-compose.yml mounts configs/grafana/dashboards at this path (tests/test_ops.py).
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_every_panel_queries_the_provisioned_datasource() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "monitord" and dashboard["title"]
    all_panels = list(panels(dashboard))
    assert len(all_panels) >= 10
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in all_panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": UID}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == UID and target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == UID, variable["name"]


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    expressions = "\n".join(expression for _, expression in panel_queries())
    for needed in (
        "sum by (source, outcome) (rate(monitord_images_total",
        "histogram_quantile(0.5, sum by (le) (rate(monitord_end_to_end_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(monitord_end_to_end_duration_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(monitord_inference_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(monitord_inference_duration_seconds_bucket",
        "monitord_batch_size", "sum by (stage) (monitord_queue_depth",
        "monitord_prediction_confidence_bucket", "monitord_drift_statistic", "monitord_drift_threshold",
        "monitord_drift_level", "monitord_accuracy", "monitord_accuracy_labels", "monitord_alerts_total",
        "sum by (detector, level) (increase(monitord_drift_events_total",
    ):
        assert needed in expressions, needed
    # The accuracy estimated without labels, beside the labelled accuracy, with its reliability.
    by_title = {panel["title"]: panel for panel in panels(load_dashboard())}
    labelled, estimated = by_title["Accuracy"], by_title["Estimated accuracy (no labels)"]
    assert [target["expr"].split("{")[0] for target in estimated["targets"]] == [
        "monitord_estimated_accuracy", "monitord_reference_accuracy", "monitord_estimated_accuracy_reliable"]
    assert estimated["gridPos"]["y"] == labelled["gridPos"]["y"]
    assert estimated["gridPos"]["x"] == labelled["gridPos"]["x"] + labelled["gridPos"]["w"]
    statistic = next(p for p in panels(load_dashboard()) if "monitord_drift_statistic" in p["targets"][0]["expr"])
    assert statistic["repeat"] == "detector"  # one panel per detector
    assert "monitord_drift_threshold" in statistic["targets"][1]["expr"]


def test_panel_queries_substitutes_every_variable() -> None:
    assert all("$" not in expression and "[[" not in expression for _, expression in panel_queries())
    assert substitute("rate(x{a=~\"${instance}\"}[$__rate_interval])", {"instance": ".*", "__rate_interval": "1m"}) \
        == 'rate(x{a=~".*"}[1m])'
    with pytest.raises(KeyError, match="nowhere"):
        substitute("x{a=\"$nowhere\"}", {})


def test_the_dashboard_json_is_formatted_as_shipped() -> None:
    # Valid JSON that a reviewer can diff: two-space indentation, one trailing newline.
    text = DASHBOARD.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


DRIFT_SETTINGS = """
sources = ["http"]
[model]
type = "brightness"
[[detectors]]
type = "over"
signal = "brightness"
name = "bright"
limit = 0.5
"""


def test_the_drift_events_panel_shows_a_detectors_first_event(tmp_path: Path) -> None:
    # The first event of a detector used to create its counter at 1, which increase() cannot see.
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=DRIFT_SETTINGS, env=install_testplugin(tmp_path / "site"))
    prometheus = None
    try:
        daemon.start()
        prometheus = start_prometheus(tmp_path, yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "monitord", "static_configs": [{"targets": [f"127.0.0.1:{daemon.port}"]}]}],
        }))

        def scrapes() -> float:
            result = prometheus_query(prometheus, 'count_over_time(up{job="monitord"}[1m])')["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        wait_for(lambda: scrapes() >= 3, timeout=60, message="Prometheus to scrape the daemon before any image")
        for level in (250, 10):  # one drift event, then back below the limit
            request = urllib.request.Request(daemon.url + "/v1/predict", data=png(level),
                                             headers={"Content-Type": "image/png"})
            urllib.request.urlopen(request, timeout=10).close()
        assert daemon.metric("monitord_drift_events_total", detector="bright", type="over", signal="brightness",
                             level="drift") == 1
        (expression,) = [expr for title, expr in panel_queries() if title == "Drift events"]

        def shown() -> dict[str, float]:
            result = prometheus_query(prometheus, expression)["data"]["result"]
            return {series["metric"]["level"]: float(series["value"][1])
                    for series in result if series["metric"].get("detector") == "bright"}

        try:
            wait_for(lambda: shown().get("drift", 0) > 0, timeout=60, interval=0.5,
                     message="the Drift events panel to show the first drift event")
        except AssertionError as error:
            raise AssertionError(f"{error}; the panel shows {shown()}") from None
        assert shown().get("warning") == 0  # the warning series is there too, at 0
    finally:
        if prometheus is not None:
            prometheus.stop()
        daemon.kill()
