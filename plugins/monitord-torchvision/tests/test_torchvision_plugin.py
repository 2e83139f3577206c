"""The plugin as monitord discovers it: entry point, hookimpls, lazy imports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import monitord.hookspecs
import pluggy

from monitord_torchvision import plugin


def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(monitord.hookspecs.PROJECT_NAME)
    pm.add_hookspecs(monitord.hookspecs)
    (entry_point,) = [ep for ep in entry_points(group="monitord") if ep.name == "torchvision"]
    assert entry_point.value == "monitord_torchvision.plugin"
    assert entry_point.dist is not None and entry_point.dist.name == "monitord-torchvision"
    pm.register(entry_point.load(), name="torchvision")
    pm.check_pending()
    return pm


def test_entry_point_registers_the_model_factory(artifact_dir: Path, tmp_path: Path) -> None:
    registered: dict[str, Callable[..., Any]] = {}
    plugin_manager().hook.register_models(register=registered.__setitem__)
    assert set(registered) == {"torchvision"}
    from monitord.settings import ModelSettings

    model = registered["torchvision"](ModelSettings(artifact=artifact_dir, device="cpu"), tmp_path)
    try:
        assert model.name == "digits_cnn"
    finally:
        model.close()


def test_entry_point_adds_the_train_and_demo_commands() -> None:
    cli = click.Group("monitord")
    plugin_manager().hook.register_commands(cli=cli)
    assert {"train", "demo"} <= set(cli.commands)


def test_loading_the_plugin_does_not_import_torch() -> None:
    code = (
        "import sys, click, monitord_torchvision.plugin as p\n"
        "cli = click.Group(); p.register_commands(cli); p.register_models(lambda n, f: None)\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, f'imported {heavy}'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert plugin.MODEL_TYPE == "torchvision"
