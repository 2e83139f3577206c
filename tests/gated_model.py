"""A model that holds each image in preprocessing while a gate file exists.

The test plugin's brightness model with a gate: a test makes the daemon busy at an exact
point (an image in preprocessing, the rest behind it), looks, then removes the gate.
"""

from __future__ import annotations

from pathlib import Path

from installed_plugin import install_testplugin

GATED_PLUGIN = '''
"""The brightness model, with preprocessing that waits while a gate file exists."""

import time
from pathlib import Path

from monitord.hookspecs import hookimpl
from monitord_testplugin import BrightnessModel


class GatedModel(BrightnessModel):
    name = "gated"

    def __init__(self, gate: str, entered: str) -> None:
        super().__init__()
        self.gate, self.entered = Path(gate), Path(entered)

    def preprocess(self, image):
        self.entered.touch()
        while self.gate.exists():
            time.sleep(0.02)
        return super().preprocess(image)


@hookimpl
def register_models(register):
    register("gated", lambda settings, state_dir: GatedModel(**settings.plugin_options()))
'''


def gated_model(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """The environment that installs the gated model, its gate (closed) and the file it
    touches when an image reaches preprocessing."""
    site = tmp_path / "site"
    env = {**install_testplugin(site, hooks_module="monitord_gated"), "MONITORD_LOAD_PLUGINS": "monitord-testplugin"}
    (site / "monitord_gated.py").write_text(GATED_PLUGIN)
    gate, entered = tmp_path / "gate", tmp_path / "entered"
    gate.touch()
    return env, gate, entered


def gated_model_settings(gate: Path, entered: Path) -> str:
    """The ``[model]`` table of a daemon's TOML settings that selects the gated model."""
    return f'[model]\ntype = "gated"\ngate = "{gate}"\nentered = "{entered}"\n'
