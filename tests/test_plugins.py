"""Plugins arrive through entry points, the same way a third-party distribution would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_process import DaemonProcess, free_port, wait_for
from installed_plugin import install_testplugin
from monitord.plugins import PluginError, load_plugins

def monitord(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitord", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_entry_point_plugin_is_listed_with_its_distribution(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    result = monitord("plugins", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {(row["name"], row["kind"]): row for row in json.loads(result.stdout)}
    assert rows[("ticker", "source")]["distribution"] == "monitord-testplugin"
    assert rows[("ticker", "source")]["version"] == "0.3"
    assert rows[("brightness", "model")]["plugin"] == "testplugin"
    # built-ins are registered through the same hooks
    assert rows[("folder", "source")]["distribution"] == "monitord"
    assert rows[("http", "source")]["distribution"] == "monitord"
    assert ("run", "command") in rows and ("plugins", "command") in rows

    table = monitord("plugins", env=env, cwd=tmp_path).stdout
    assert "ticker" in table and "monitord-testplugin" in table


def test_load_plugins_env_restricts_entry_points(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    restricted = monitord("plugins", "--json", env={**env, "MONITORD_LOAD_PLUGINS": "monitord-torchvision"}, cwd=tmp_path)
    names = {row["name"] for row in json.loads(restricted.stdout)}
    assert "ticker" not in names
    assert "folder" in names  # built-ins always load
    allowed = monitord("plugins", "--json", env={**env, "MONITORD_LOAD_PLUGINS": "monitord_testplugin"}, cwd=tmp_path)
    assert "ticker" in {row["name"] for row in json.loads(allowed.stdout)}


def test_misspelled_hook_fails_loudly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "typo_plugin.py").write_text(
        "from monitord.hookspecs import hookimpl\n\n@hookimpl\ndef register_sauces(register):\n    pass\n"
    )
    env = install_testplugin(site, hooks_module="typo_plugin")
    result = monitord("plugins", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "register_sauces" in result.stderr


def test_duplicate_registration_names_both_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    host = load_plugins({"MONITORD_LOAD_PLUGINS": ""})

    class Clash:
        @staticmethod
        def register_sources(register):
            register("folder", object)

    from monitord.hookspecs import hookimpl

    Clash.register_sources = staticmethod(hookimpl(Clash.register_sources))
    host.pm.register(Clash, name="clash")
    with pytest.raises(PluginError, match="registered twice.*monitord.builtin.folder_source.*clash"):
        host.registered("source")


def test_unknown_factory_lists_what_is_installed() -> None:
    host = load_plugins({"MONITORD_LOAD_PLUGINS": ""})
    with pytest.raises(PluginError, match=r"no source named 'ftp'.*installed: folder, http"):
        host.factory("source", "ftp")


def test_plugin_source_and_model_run_in_the_daemon(tmp_path: Path) -> None:
    env = install_testplugin(tmp_path / "site")
    process = DaemonProcess(
        tmp_path,
        free_port(),
        extra_settings='sources = ["ticker", "http"]\n[source_options.ticker]\ncount = 5\n'
        '[model]\ntype = "brightness"\n',
        env=env,
    )
    try:
        process.start()
        wait_for(lambda: process.metric("monitord_images_total", source="ticker", outcome="ok") == 5,
                 message="5 images from the plugin source")
        assert process.metric("monitord_predictions_total", **{"class": "bright"}) == 5
        assert process.terminate() == 0
    finally:
        process.kill()
