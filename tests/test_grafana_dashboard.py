"""The shipped Grafana provisioning and dashboard: valid, fixed uids, every panel queries the
provisioned datasource. That every panel's PromQL parses and returns data from a real
Prometheus is proven in test_observability_chain.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from grafana_dashboard import DASHBOARD, load_dashboard, panel_queries, panels, substitute

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
        "monitord_drift_level", "monitord_accuracy", "monitord_alerts_total",
    ):
        assert needed in expressions, needed
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
