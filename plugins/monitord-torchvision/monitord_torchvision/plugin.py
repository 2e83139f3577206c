"""The hook implementations monitord discovers through the ``monitord`` entry point.

Thin on purpose: hooks only register, and nothing here imports torch, so loading the
plugin costs nothing until the daemon actually builds the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from monitord.hookspecs import Register, hookimpl
from monitord.settings import ModelSettings

if TYPE_CHECKING:
    from .inference import TorchvisionModel

#: The ``model.type`` this plugin serves.
MODEL_TYPE = "torchvision"


#: The signals every model of this plugin produces (``signals`` computes them; declared
#: here, where nothing imports torch, for the daemon's start-up check).
SIGNALS: tuple[str, ...] = (
    "confidence",
    "entropy",
    "margin",
    "predicted_class",
    "activation_mean",
    "activation_std",
)


class TorchvisionModelFactory:
    """The model factory; imports torch only when the daemon asks for a model."""

    def __call__(self, settings: ModelSettings, state_dir: Path) -> TorchvisionModel:
        from .loading import load_model

        return load_model(settings, state_dir)

    def signals(self, settings: ModelSettings) -> tuple[str, ...]:
        """Check the plugin's ``[model]`` keys (``SettingsError`` naming a bad one) and
        name the signals, before anything loads."""
        from .options import parse_options

        parse_options(settings)
        return SIGNALS


torchvision_model = TorchvisionModelFactory()


@hookimpl
def register_models(register: Register) -> None:
    register(MODEL_TYPE, torchvision_model)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import train_command
    from .demo import demo_command
    from .evaluate_command import evaluate_command
    from .samples import samples_command

    cli.add_command(train_command)
    cli.add_command(demo_command)
    cli.add_command(samples_command)
    cli.add_command(evaluate_command)
