"""The distribution as installed: found through its entry point, and free until used."""

from __future__ import annotations

import json
import subprocess
import sys


def test_it_adds_the_command_and_the_route() -> None:
    listed = subprocess.run([sys.executable, "-m", "monitord", "plugins", "--json"], capture_output=True, text=True,
                            timeout=120, check=True)
    rows = {(row["name"], row["kind"]): row for row in json.loads(listed.stdout)}
    assert rows[("report", "command")]["distribution"] == "monitord-evidently"
    assert rows[("/v1/report", "route")]["distribution"] == "monitord-evidently"


def test_loading_it_imports_neither_evidently_nor_pandas() -> None:
    """What the daemon does at start (plugins, their commands and routes) leaves both unloaded."""
    probe = ("import sys\n"
             "from monitord.cli import make_cli\n"
             "cli, host = make_cli()\n"
             "assert 'report' in cli.commands and '/v1/report' in host.registered('route')\n"
             "from monitord.plugin_routes import RouteContext\n"
             "from monitord.settings import Settings\n"
             "host.registered('route')['/v1/report'].factory(RouteContext(Settings()))\n"
             "print(sorted(name for name in ('evidently', 'pandas') if name in sys.modules))\n")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]"
