"""The shipped Grafana dashboard (configs/grafana/dashboards/monitord.json) as plain PromQL.

``panel_queries()`` gives every panel's expressions with Grafana's variables replaced by
values Prometheus accepts, so tests can send them to a real Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

CONFIGS = Path(__file__).parents[1] / "configs"
DASHBOARD = CONFIGS / "grafana" / "dashboards" / "monitord.json"

# Grafana's built-in interval variables, replaced by a window that holds several 1 s-15 s scrapes.
BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, also those nested inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute(expression: str, variables: dict[str, str]) -> str:
    """``expression`` with ``$name``, ``${name}`` and ``[[name]]`` replaced; an unknown name is an error."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            raise KeyError(f"the dashboard uses the variable ${name}, which it does not define")
        return variables[name]

    return _VARIABLE.sub(replace, expression)


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable as its "All" value (a regex matching every value), plus the built-ins."""
    variables = dict(BUILTINS)
    for variable in dashboard.get("templating", {}).get("list", []):
        variables[variable["name"]] = variable.get("allValue") or ".*"
    return variables


def panel_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every target of every panel, variables substituted."""
    dashboard = load_dashboard(path)
    variables = dashboard_variables(dashboard)
    queries = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            queries.append((panel["title"], substitute(target["expr"], variables)))
    return queries
