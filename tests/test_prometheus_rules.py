"""The shipped Prometheus rules and configs, checked by the real tools.

``promtool check rules``, ``promtool test rules`` (configs/prometheus_rules.test.yaml: every
alert firing and not firing), ``promtool check config`` on both Prometheus configs and
``amtool check-config`` on alertmanager.yml. Without the binaries these tests skip with the
reason, unless MONITORD_REQUIRE_PROMETHEUS is set (.ci/run sets it), where they fail.
Every metric a rule reads must exist in a real daemon's /metrics.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from servers import require_binary

CONFIGS = Path(__file__).parents[1] / "configs"
RULES = CONFIGS / "prometheus_rules.yaml"
RULE_TESTS = CONFIGS / "prometheus_rules.test.yaml"
REQUIRED_ALERTS = {
    "MonitordDriftDetected", "MonitordDriftWarning", "MonitordDown", "MonitordRejectedImagesHigh",
    "MonitordQueueSaturated", "MonitordAccuracyDrop", "MonitordNoTraffic",
}
# Names in PromQL that are functions, keywords or Prometheus's own series, not monitord metrics.
PROMQL_WORDS = {
    "up", "or", "and", "unless", "on", "ignoring", "by", "without", "group_left", "group_right", "bool",
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "absent", "max_over_time",
    "min_over_time", "avg_over_time", "histogram_quantile", "le", "offset",
}


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary(argv[0])
    return subprocess.run([binary, *argv[1:]], cwd=CONFIGS.parent, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules() -> None:
    result = run_tool("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = run_tool("promtool", "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("config", ["prometheus.yml", "local/prometheus.yml"])
def test_promtool_checks_the_prometheus_configs(config: str) -> None:
    result = run_tool("promtool", "check", "config", str(CONFIGS / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # the rule file path resolves


def test_amtool_checks_the_alertmanager_config() -> None:
    result = run_tool("amtool", "check-config", str(CONFIGS / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_is_an_alert_with_for_severity_summary_and_description() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert all("alert" in rule for rule in rules()), "only alerting rules are expected"
    assert REQUIRED_ALERTS <= alerts.keys(), REQUIRED_ALERTS - alerts.keys()
    for name, rule in alerts.items():
        assert name.startswith("Monitord"), name  # alertmanager.yml routes alertname=~"Monitord.*"
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert summary and len(description) > 100, name
    # The on-call is told where to look.
    for name in ("MonitordDriftDetected", "MonitordDriftWarning"):
        text = alerts[name]["annotations"]["description"]
        assert "/v1/detectors" in text and "$labels.detector" in text and "$labels.signal" in text, name
    assert "pipeline.queue_size" in alerts["MonitordQueueSaturated"]["annotations"]["description"]
    assert "NaN" not in alerts["MonitordAccuracyDrop"]["expr"]  # NaN < x is false: silent without labels


def test_rule_unit_tests_cover_every_alert_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in test.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - firing == set(), f"alerts never tested firing: {names - firing}"
    assert names - silent == set(), f"alerts never tested not firing: {names - silent}"
    assert (firing | silent) <= names, f"tests of alerts that do not exist: {(firing | silent) - names}"


def metric_names_in(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    # Label names inside braces and by/on/without lists are not metrics.
    labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", without_ranges))
    for group in re.findall(r"(?:by|on|without|ignoring)\s*\(([^)]*)\)", without_ranges):
        labels |= {label.strip() for label in group.split(",")}
    return {name for name in names - labels - PROMQL_WORDS if not re.fullmatch(r"\d.*|e\d*", name)}


def exposed_metric_names(metrics_text: str) -> set[str]:
    """Every sample name a family declared in /metrics can produce (also families still empty)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\w+)$", metrics_text, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    return names


def test_metric_name_extraction() -> None:
    assert metric_names_in('sum by (job, source) (rate(monitord_images_total{outcome="rejected"}[10m])) / '
                           'up{job="monitord"} > 0.1 or absent(monitord_queue_depth) > 1e3') == {
        "monitord_images_total", "monitord_queue_depth"}


def test_every_metric_the_rules_read_exists_in_a_real_daemon(daemon) -> None:
    process = daemon()
    with urllib.request.urlopen(process.url + "/metrics", timeout=10) as response:
        exposed = exposed_metric_names(response.read().decode())
    assert "monitord_images_total" in exposed and "monitord_prediction_confidence_bucket" in exposed
    used = set().union(*(metric_names_in(rule["expr"]) for rule in rules()))
    assert used, "no metric found in the rules"
    assert used - exposed == set(), f"rules read metrics the daemon does not export: {used - exposed}"
