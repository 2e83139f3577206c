"""``monitord reference DIR``: build the drift reference of the configured model.

Loads the model the settings name (as the daemon would), runs it over a folder of
validation images and writes the reference into the model artifact (``model.artifact``),
where the daemon finds it at its next start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from monitord.plugins import PluginError, PluginHost
from monitord.settings import SettingsError, load_settings


class ReferenceProblem(click.ClickException):
    """Settings or images that cannot make a reference: one line, exit status 2."""

    exit_code = 2


def reference_command() -> click.Command:
    @click.command("reference")
    @click.argument("folder", type=click.Path(path_type=Path))
    @click.option("--config", "-c", type=click.Path(dir_okay=False, path_type=Path), envvar="MONITORD_CONFIG",
                  help="TOML settings file naming the model (model.*). Env: MONITORD_CONFIG.")
    @click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                  help="Images per forward pass.")
    @click.option("--components", type=click.IntRange(min=0), default=8, show_default=True,
                  help="Principal directions of the embedding kept as signals embedding_1 ... (0: none).")
    @click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
    @click.pass_obj
    def reference(host: PluginHost, folder: Path, config: Path | None, batch_size: int, components: int,
                  progress: bool) -> None:
        """Build the drift reference from a folder of validation images.

        FOLDER holds one sub-folder per class (FOLDER/<class>/*.png: the accuracy and the
        confidence calibration are measured too) or the images themselves (unlabelled).
        The configured model runs over them exactly as the daemon runs it; every signal's
        values, the principal directions of its embedding, the calibration and the
        accuracy are written to <model.artifact>/reference/. Detectors take their
        reference from there at the daemon's next start.
        """
        from monitord.reference import ReferenceError, build_reference, images_in_folder, write_reference

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            settings = load_settings(config)
            factory = host.factory("model", settings.model.type)
        except (SettingsError, PluginError) as error:
            raise ReferenceProblem(str(error)) from None
        try:
            contents = images_in_folder(folder)  # the layout is checked before the model loads (slow)
        except ReferenceError as error:
            raise ReferenceProblem(str(error)) from None
        try:
            model = factory(settings.model, settings.state_dir)
        except Exception as error:  # a model plugin's own error types say what is wrong
            raise click.ClickException(f"cannot load the model: {error}") from None
        try:
            contents.refuse_unknown_classes(folder, model.class_names)
            built = build_reference(model, contents.images, batch_size=batch_size, progress=progress,
                                    max_pixels=settings.pipeline.max_image_pixels, components=components,
                                    decode_threads=settings.pipeline.decode_workers, source=str(folder.resolve()))
        except ReferenceError as error:
            raise ReferenceProblem(str(error)) from None
        finally:
            model.close()
        written = write_reference(settings.model_artifact, built)
        for line in describe(built, contents.ignored):
            click.echo(line)
        click.echo(f"wrote the reference to {written} (the daemon uses it from its next start)")
        problem = detectors_refusing(settings, host, built.signal_lists(), settings.model_artifact)
        if problem is not None:
            click.echo(f"warning: the configured detectors cannot start on this reference:\n{problem}\n"
                       "build it from more images, or change those detectors' settings", err=True)

    return reference


def detectors_refusing(settings: Any, host: PluginHost, signals: dict[str, list[float]],
                       artifact: Path) -> str | None:
    """Why configured detectors would not start on ``signals`` (a reference too short for a
    window, say), one line per detector, or None: better said now than when the daemon
    starts. What they compute from the reference (calibrations) is kept in the artifact's
    reference cache, where the daemon finds it instead of computing it again."""
    from monitord.detectors import DetectorStage
    from monitord.metrics import Metrics
    from monitord.reference_cache import FOLDER_NAME, ReferenceCache, using

    cache = Path(artifact) / FOLDER_NAME
    refusals = []
    with using(ReferenceCache([cache], cache)):
        for spec in settings.detectors:  # each alone, so that every refusal is said at once
            try:
                stage = DetectorStage.build([spec], lambda kind: host.factory("detector", kind), signals, Metrics())
            except (ValueError, PluginError) as error:
                refusals.append(str(error))
                continue
            for watched in stage.detectors:
                close = getattr(watched.detector, "close", None)
                if callable(close):
                    close()
    return "\n".join(refusals) or None


def describe(reference: Any, ignored: list[Path] = ()) -> list[str]:
    """The summary a person reads after a build, a line per fact."""
    summary = reference.summary
    lines = [f"images: {reference.samples} in {summary['seconds']:.1f} s "
             f"({summary['images_per_second'] or 0:.0f} images/s), "
             f"{'labelled' if summary['labelled'] else 'unlabelled'}"]
    per_class = summary.get("per_class")
    if per_class:
        lines.append(f"accuracy: {summary['accuracy']:.2%}")
        width = max(len(name) for name in per_class)
        for name, row in per_class.items():
            lines.append(f"  {name.ljust(width)}  {row['images']:>6} images  {row['accuracy']:7.2%}")
    else:
        lines.append("predicted per class: " + ", ".join(f"{name} {count}" for name, count in
                                                          summary["predicted_per_class"].items()))
    if reference.calibration is not None:
        lines.append(f"calibration: expected calibration error {reference.calibration.ece:.3f}")
    if reference.projection is not None:
        explained = float(sum(reference.projection.explained_variance_ratio))
        lines.append(f"embedding: {len(reference.projection.names)} principal directions of "
                     f"{reference.projection.dimensions} dimensions ({explained:.0%} of the variance) as signals "
                     f"{reference.projection.names[0]} ... {reference.projection.names[-1]}")
    else:
        lines.append("embedding: none (the model gives no embedding)")
    if summary["skipped"]:
        lines.append(f"skipped {summary['skipped']} image(s) that could not be used:")
        lines.extend(f"  {row['image']}: {row['reason']}" for row in summary["skipped_examples"])
    if ignored:
        lines.append(f"ignored {len(ignored)} file(s) without an image extension, e.g. {ignored[0]}")
    return lines
