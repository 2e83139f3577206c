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


def torchvision_model(settings: ModelSettings, state_dir: Path) -> TorchvisionModel:
    """The model factory; imports torch only when the daemon asks for a model."""
    from .loading import load_model

    return load_model(settings, state_dir)


@hookimpl
def register_models(register: Register) -> None:
    register(MODEL_TYPE, torchvision_model)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import train_command
    from .demo import demo_command
    from .samples import samples_command

    cli.add_command(train_command)
    cli.add_command(demo_command)
    cli.add_command(samples_command)
