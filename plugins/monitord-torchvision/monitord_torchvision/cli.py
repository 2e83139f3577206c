"""``monitord train``: train the default digits model, or a model on a folder of labelled
images (``--data``), into an artifact folder.

torch is imported inside the command, not at module level: the plugin adds this command
to every ``monitord`` invocation, and ``monitord --help`` should stay instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from monitord.settings import SettingsError, load_settings

from .defaults import (
    DEFAULT_EPOCHS,
    DEFAULT_SEED,
    FOLDER_EPOCHS,
    FOLDER_MIN_ACCURACY,
    FOLDER_PATIENCE,
    MIN_ACCURACY,
)

if TYPE_CHECKING:
    from .folder_training import FolderTrainingReport


class SettingsProblem(click.ClickException):
    """A settings error: printed to stderr without a traceback, exit status 2."""

    exit_code = 2


class DataProblem(click.ClickException):
    """A ``--data`` folder that cannot be trained on: the message says why, exit status 2."""

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
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Folder of labelled images to train on: DIR/train/<class>/ and DIR/val/<class>/, "
    "or DIR/<class>/ (a seeded, stratified fifth is then held out). The architecture, "
    "input size, channels, mean/std and the weights to start from are model.architecture "
    "(default digits_cnn), model.input_size, model.channels, model.mean/std and "
    "model.weights.  [default: the scikit-learn digits]",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help=f"Epochs to train.  [default: {DEFAULT_EPOCHS} for the digits; with --data at most "
    f"{FOLDER_EPOCHS}, fewer when the validation loss stops improving for "
    f"{FOLDER_PATIENCE} epochs]",
)
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True)
@click.option(
    "--device",
    help="auto, cpu, cuda or cuda:N.  [default: model.device from the settings, else auto]",
)
@click.option(
    "--min-accuracy",
    type=click.FloatRange(0.0, 1.0),
    help="Write nothing and fail when the held-out accuracy is lower.  [default: "
    f"{MIN_ACCURACY} for the digits; none with --data, where what is good enough depends "
    "on the task]",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def train_command(
    config_file: Path | None,
    output: Path | None,
    data: Path | None,
    epochs: int | None,
    seed: int,
    device: str | None,
    min_accuracy: float | None,
    progress: bool,
) -> None:
    """Train a model and write its artifact: the default digits model (digits_cnn), or
    with --data a model of your own on a folder of labelled images.

    The digits are the scikit-learn ones (bundled, nothing is downloaded); the accuracy is
    measured on a fixed held-out fifth, whose signals become the reference for drift
    detectors. With --data, the model trains (or fine-tunes, from model.weights) on the
    folder's training images, stops early when the validation loss stops improving, and
    its drift reference is built from the validation images. The daemon serves the
    artifact from model.artifact alone.
    """
    if data is not None:
        _train_on_folder(data, config_file, output, epochs, seed, device, min_accuracy, progress)
        return
    epochs = epochs if epochs is not None else DEFAULT_EPOCHS
    min_accuracy = min_accuracy if min_accuracy is not None else MIN_ACCURACY
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


def _train_on_folder(
    data: Path,
    config_file: Path | None,
    output: Path | None,
    epochs: int | None,
    seed: int,
    device: str | None,
    min_accuracy: float | None,
    progress: bool,
) -> None:
    """``monitord train --data DIR``: the model the ``model.*`` settings describe."""
    from .devices import resolve_device
    from .errors import TrainingError
    from .folder_training import parse_training_options, train_on_folder
    from .image_folder import DatasetError

    try:
        settings = load_settings(config_file)
        options = parse_training_options(settings.model)
        device_key = "--device" if device is not None else "model.device"
        torch_device = resolve_device(device if device is not None else settings.model.device,
                                      key=device_key)  # fmt: skip
    except SettingsError as error:
        raise SettingsProblem(str(error)) from None
    output = output if output is not None else settings.model_artifact
    if options.classes is not None or options.classes_file is not None:
        click.echo(
            "note: model.classes/model.classes_file are not used by --data: the class names "
            "are the folder names",
            err=True,
        )
    required = min_accuracy if min_accuracy is not None else FOLDER_MIN_ACCURACY
    try:
        report = train_on_folder(
            data,
            output,
            options,
            seed=seed,
            device=torch_device,
            max_pixels=settings.pipeline.max_image_pixels,
            epochs=epochs if epochs is not None else FOLDER_EPOCHS,
            progress=progress,
            min_accuracy=required,
            note=click.echo,
        )
    except DatasetError as error:
        raise DataProblem(str(error)) from None
    except SettingsError as error:
        raise SettingsProblem(str(error)) from None
    except FileExistsError as error:
        raise click.ClickException(str(error)) from None
    except TrainingError as error:
        _echo_held_out(error.report)
        raise click.ClickException(str(error)) from None
    _echo_held_out(report)
    if min_accuracy is None:
        click.echo("  (no --min-accuracy given: written whatever the accuracy)")
    ending = (
        f"stopped early: the validation loss last improved at epoch {report.best_epoch}"
        if report.stopped_early
        else f"lowest validation loss at epoch {report.best_epoch}"
    )
    click.echo(f"epochs: {report.epochs} of at most {report.max_epochs} ({ending}, whose "
               "weights are kept)")  # fmt: skip
    click.echo(
        f"wrote model artifact to {Path(output).resolve()} ({report.architecture}, "
        f"{len(report.class_names)} classes, {report.train_samples} training images, seed "
        f"{report.seed}, {report.seconds:.1f} s on {report.device})"
    )
    click.echo(f"drift reference: the {report.held_out_samples} validation images")
    click.echo(
        f"serve it with model.artifact = '{Path(output).resolve()}' alone"
        + (": unset model.architecture, or the daemon loads model.weights instead"
           if options.architecture is not None else "")  # fmt: skip
    )


def _echo_held_out(report: FolderTrainingReport) -> None:
    click.echo(
        f"held-out accuracy: {report.held_out_accuracy:.2%} "
        f"({report.held_out_samples} validation images)"
    )
    width = max(len("class"), *(len(result.name) for result in report.per_class))
    click.echo(f"  {'class':<{width}}  accuracy  images")
    for result in report.per_class:
        accuracy = f"{result.accuracy:.2%}" if result.accuracy is not None else "-"
        click.echo(f"  {result.name:<{width}}  {accuracy:>8}  {result.samples:>6}")
