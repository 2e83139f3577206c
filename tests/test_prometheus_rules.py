"""The shipped Prometheus rules and configs, checked by the real tools.

``promtool check rules``, ``promtool test rules`` (configs/prometheus_rules.test.yaml: every
alert firing and not firing), ``promtool check config`` on both Prometheus configs and
``amtool check-config`` on alertmanager.yml. Without the binaries these tests skip with the
reason, unless MONITORD_REQUIRE_PROMETHEUS is set (.ci/run sets it), where they fail.
Every metric a rule reads must exist in a real daemon's /metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from servers import require_binary

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
README = ROOT / "README.md"
DASHBOARD = CONFIGS / "grafana" / "dashboards" / "monitord.json"
RULES = CONFIGS / "prometheus_rules.yaml"
RULE_TESTS = CONFIGS / "prometheus_rules.test.yaml"
REQUIRED_ALERTS = {
    "MonitordDriftDetected", "MonitordDriftWarning", "MonitordDown", "MonitordRejectedImagesHigh",
    "MonitordQueueSaturated", "MonitordAccuracyDrop", "MonitordNoTraffic", "MonitordEstimatedAccuracyDrop",
}
# Names in PromQL that are functions, keywords or Prometheus's own series, not monitord metrics.
PROMQL_WORDS = {
    "up", "or", "and", "unless", "on", "ignoring", "by", "without", "group_left", "group_right", "bool",
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "absent", "max_over_time",
    "min_over_time", "avg_over_time", "histogram_quantile", "le",
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
    without_ranges = re.sub(r"\[[^\]]*\]|\boffset\s+\w+", "", without_strings)
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
                           'up{job="monitord"} > 0.1 or absent(monitord_queue_depth) > 1e3 '
                           'and up offset 25m and monitord_accuracy offset 1h30m') == {
        "monitord_images_total", "monitord_queue_depth", "monitord_accuracy"}


def test_every_metric_the_rules_read_exists_in_a_real_daemon(daemon) -> None:
    process = daemon()
    with urllib.request.urlopen(process.url + "/metrics", timeout=10) as response:
        exposed = exposed_metric_names(response.read().decode())
    assert "monitord_images_total" in exposed and "monitord_prediction_confidence_bucket" in exposed
    used = set().union(*(metric_names_in(rule["expr"]) for rule in rules()))
    assert used, "no metric found in the rules"
    assert used - exposed == set(), f"rules read metrics the daemon does not export: {used - exposed}"


def readme_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (lower case, punctuation dropped,
    spaces as hyphens, a repeated one numbered)."""
    anchors: set[str] = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"#{1,6} (.+)", line)
        if in_code or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        anchor, number = slug, 0
        while anchor in anchors:
            number += 1
            anchor = f"{slug}-{number}"
        anchors.add(anchor)
    return anchors


def test_readme_anchors_follow_github() -> None:
    assert readme_anchors("# A b\n## `x.y` (z)\n```\n# not a heading\n```\n### A b\n") == {"a-b", "xy-z", "a-b-1"}


def test_every_rule_links_its_runbook_in_the_readme_and_the_dashboard() -> None:
    anchors = readme_anchors(README.read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for rule in rules():
        name, annotations = rule["alert"], rule["annotations"]
        runbook = urllib.parse.urlsplit(annotations.get("runbook_url", ""))
        assert runbook.path == "README.md", f"{name}: runbook_url {annotations.get('runbook_url')!r}"
        assert runbook.fragment in anchors, f"{name}: README.md has no section #{runbook.fragment}"
        assert runbook.fragment == name.lower(), f"{name}: the runbook section is named after the alert"
        link = urllib.parse.urlsplit(annotations.get("dashboard", ""))
        assert link.path == f"/d/{dashboard['uid']}/{dashboard['title']}", f"{name}: dashboard {link.path!r}"
        for key, _ in urllib.parse.parse_qsl(link.query, keep_blank_values=True):
            assert key.removeprefix("var-") in variables, f"{name}: the dashboard has no variable for {key}"


def seconds(duration: str) -> float:
    """A Prometheus duration (``15s``, ``5m``, ``1h30m``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(int(number) * units[unit] for number, unit in parts)


def spoken(total: float) -> str:
    minutes, rest = divmod(int(total), 60)
    return " ".join(part for part in (f"{minutes} min" if minutes else "", f"{rest} s" if rest else "") if part)


def test_the_readme_and_the_routing_state_the_alert_latency_of_the_shipped_configs() -> None:
    prometheus = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())["global"]
    alertmanager_text = (CONFIGS / "alertmanager.yml").read_text()
    route = next(r for r in yaml.safe_load(alertmanager_text)["route"]["routes"] if r["receiver"] == "monitord-webhook")
    drift = next(rule for rule in rules() if rule["alert"] == "MonitordDriftDetected")
    (window,) = set(re.findall(r"\[(\w+)\]", drift["expr"]))
    readme = README.read_text()
    section = readme[readme.index("### Alert latency"):]
    section = section[:section.index("\n### ")]
    stated = {
        "`scrape_interval`": prometheus["scrape_interval"], "`evaluation_interval`": prometheus["evaluation_interval"],
        "`for`": drift["for"], "window": window, "`group_wait`": route["group_wait"],
        "`group_interval`": route["group_interval"],
    }
    for name, value in stated.items():
        assert f"{name} ({value})" in section, f"README's Alert latency should state {name} ({value})"
    firing = sum(seconds(stated[name]) for name in ("`scrape_interval`", "`evaluation_interval`", "`for`", "`group_wait`"))
    resolving = sum(seconds(stated[name]) for name in ("`scrape_interval`", "window", "`evaluation_interval`",
                                                      "`group_interval`"))
    assert f"**up to {spoken(firing)}**" in section and f"**up to {spoken(resolving)}**" in section
    # Beside the routing too: the comment above group_interval names the resolve latency.
    comment = alertmanager_text[:alertmanager_text.index("      group_interval:")].rsplit("group_wait:", 1)[1]
    comment = " ".join(comment.replace("#", " ").split())
    assert f"up to about {resolving / 60:g} minutes after the drift stopped" in comment
    assert "resolve" in comment and "Alert latency" in comment


def test_spoken_durations() -> None:
    assert (seconds("1h30m"), seconds("15s")) == (5400, 15)
    assert (spoken(90), spoken(390), spoken(45), spoken(300)) == ("1 min 30 s", "6 min 30 s", "45 s", "5 min")
