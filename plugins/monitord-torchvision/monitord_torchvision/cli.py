"""``monitord train``: train the default digits model into an artifact folder.

torch is imported inside the command, not at module level: the plugin adds this command
to every ``monitord`` invocation, and ``monitord --help`` should stay instant.
"""

from __future__ import annotations

from pathlib import Path

import click
from monitord.settings import SettingsError, load_settings

from .defaults import DEFAULT_EPOCHS, DEFAULT_SEED, MIN_ACCURACY


class SettingsProblem(click.ClickException):
    """A settings error: printed to stderr without a traceback, exit status 2."""

    exit_code = 2


@click.command("train")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Settings file (TOML); the artifact goes to its model.artifact "
    "(default <state_dir>/model).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Artifact folder to write, instead of the one the settings name.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True)
@click.option(
    "--device",
    help="auto, cpu, cuda or cuda:N.  [default: model.device from the settings, else auto]",
)
@click.option(
    "--min-accuracy",
    type=click.FloatRange(0.0, 1.0),
    default=MIN_ACCURACY,
    show_default=True,
    help="Write nothing and fail when the held-out accuracy is lower.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def train_command(
    config_file: Path | None,
    output: Path | None,
    epochs: int,
    seed: int,
    device: str | None,
    min_accuracy: float,
    progress: bool,
) -> None:
    """Train the default digits model (digits_cnn) and write its artifact.

    Trains on the scikit-learn digits (bundled, nothing is downloaded), measures the
    accuracy on a fixed held-out fifth and records each signal's values there as the
    reference for drift detectors. The daemon serves the artifact from model.artifact.
    """
    device_key = "--device"
    if config_file is not None or output is None or device is None:
        try:
            settings = load_settings(config_file)
        except SettingsError as error:
            raise SettingsProblem(str(error)) from None
        output = output if output is not None else settings.model_artifact
        if device is None:
            device, device_key = settings.model.device, "model.device"
        architecture = settings.model.plugin_options().get("architecture")
        if settings.model.type == "torchvision" and architecture:
            click.echo(
                f"note: model.architecture = {architecture!r} is set, so the daemon serves "
                "that model from model.weights, not the digits model trained here",
                err=True,
            )
    assert output is not None

    from .devices import resolve_device
    from .errors import TrainingError
    from .training import train_default_model

    try:
        torch_device = resolve_device(device or "auto", key=device_key)
        report = train_default_model(
            output,
            seed=seed,
            epochs=epochs,
            device=torch_device,
            progress=progress,
            min_accuracy=min_accuracy,
        )
    except SettingsError as error:
        raise SettingsProblem(str(error)) from None
    except FileExistsError as error:
        raise click.ClickException(str(error)) from None
    except TrainingError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"held-out accuracy: {report.held_out_accuracy:.2%} "
        f"({report.held_out_samples} held-out digits)"
    )
    click.echo(
        f"wrote model artifact to {Path(output).resolve()} ({report.epochs} epochs, "
        f"seed {report.seed}, {report.seconds:.1f} s on {report.device})"
    )
