"""``monitord evaluate``: how the configured detectors do on the configured model's data
under each drift the demo knows, so a user can choose detectors for their own model.

It lives in this plugin because the corruptions and the default held-out digits do; the
model and the detectors are the configured ones, loaded through the plugin host as the
daemon loads them, so any model type whose images are grey or RGB can be evaluated.
torch is imported only when the command runs (``monitord --help`` stays instant).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click
from monitord.plugins import PluginError, PluginHost
from monitord.settings import DetectorSpec, Settings, SettingsError, load_settings

from .evaluation_images import DEFAULT_SEVERITIES, KINDS, EvaluationError, parse_kinds, parse_severities

if TYPE_CHECKING:
    from fractions import Fraction

    from monitord.detectors import DetectorStage
    from monitord.model import Model
    from monitord.reference import FolderContents, ServedReference

    from .evaluation import Scenario, ScenarioRecord, StreamPlan
    from .evaluation_images import HeldOut, ImageSignals


class EvaluationProblem(click.ClickException):
    """Settings or input an evaluation cannot use: one line, exit status 2."""

    exit_code = 2


@click.command("evaluate")
@click.option("--config", "-c", type=click.Path(dir_okay=False, path_type=Path), envvar="MONITORD_CONFIG",
              help="TOML settings naming the model (model.*) and the detectors to evaluate (detectors). "
                   "Env: MONITORD_CONFIG.")
@click.option("--data", type=click.Path(path_type=Path), metavar="DIR",
              help="Labelled held-out images, DIR/<class>/*.png (as `monitord reference` reads them); images "
                   "the reference was not built from give honest false-alarm counts.  [default: the 360 "
                   "held-out digits, for the digits model]")
@click.option("--kinds", default=",".join(KINDS), show_default=True, metavar="KIND,...",
              help="Corruptions to evaluate.")
@click.option("--severities", default=",".join(str(s) for s in DEFAULT_SEVERITIES), show_default=True,
              metavar="SHARE,...", help="Severities of each corruption: shares of its default amount, in (0, 1] "
                                        "(rotation 90°, noise 100, blur 1 px, contrast 0.3, brightness +100, "
                                        "full inversion, all images from --mix-classes).")
@click.option("--streams", type=click.IntRange(min=1), default=20, show_default=True,
              help="Seeded streams per scenario (and clean streams).")
@click.option("--clean", "clean_images", type=click.IntRange(min=0), default=500, show_default=True,
              help="Clean images before the change in each stream.")
@click.option("--drifted", "drifted_images", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Drifted images after the change in each stream.")
@click.option("--mix-classes", metavar="CLASS,...",
              help="Class names a class-mix scenario draws from.  [default: the first half of the classes]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the streams and the noise.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              metavar="FILE", help="Also write the records as JSON (- for standard output, instead of the table).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.pass_obj
def evaluate_command(host: PluginHost, config: Path | None, data: Path | None, kinds: str, severities: str,
                     streams: int, clean_images: int, drifted_images: int, mix_classes: str | None, seed: int,
                     json_file: Path | None, progress: bool) -> None:
    """Evaluate the configured detectors on drifted copies of held-out images.

    Each corruption (rotation, noise, blur, contrast, brightness, inversion, class mix) at
    each severity makes a scenario. The configured model runs once over the clean images
    and once over each corrupted set, through the serving path. Each stream is --clean
    clean images then --drifted drifted ones, drawn from those; the configured detectors
    (the `detectors` setting) are built for each stream as the daemon builds them, with
    the artifact's reference, and fed every image's signals (error included: the labels
    are known). Per scenario and detector it prints the share of streams in which the
    change was detected, the median and p90 delay in drifted images (a miss counts as
    endless: "-" when too many missed), the false alarms on clean streams of the same
    length, and the true accuracy of the drifted images.
    """
    from .evaluation import StreamPlan, evaluate

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        chosen_kinds = parse_kinds(kinds)
        shares = parse_severities(severities)
    except EvaluationError as error:
        raise EvaluationProblem(str(error)) from None
    plan = StreamPlan(streams=streams, clean=clean_images, drifted=drifted_images, seed=seed)
    try:
        settings = load_settings(config)
        factory = host.factory("model", settings.model.type)
        for spec in settings.detectors:
            host.factory("detector", spec.type)
    except (SettingsError, PluginError) as error:
        raise EvaluationProblem(str(error)) from None
    if not settings.detectors:
        raise EvaluationProblem("no detectors are configured (`detectors` is empty); list the ones to evaluate "
                                "in the settings, or leave the setting out for the default set")
    contents = None
    if data is not None:
        from .evaluation_images import labelled_folder

        try:
            contents = labelled_folder(data)
        except EvaluationError as error:
            raise EvaluationProblem(str(error)) from None
    try:
        model = factory(settings.model, settings.state_dir)
    except Exception as error:  # a model plugin's own error types say what is wrong
        raise click.ClickException(f"cannot load the model: {error}") from None
    try:
        served, clean, scenarios, held_out = _image_sets(model, settings, data, contents, chosen_kinds, shares,
                                                         mix_classes, seed, progress)
    except EvaluationError as error:
        raise EvaluationProblem(str(error)) from None
    finally:
        model.close()
    images_done = time.perf_counter()
    specs = _usable_specs(settings.detectors, set(clean.signals))
    from monitord.reference_cache import ReferenceCache, using

    # The daemon's reference cache, for building the detectors and while they run (a
    # bernoulli_cusum calibrates each time it learns its rate): what earlier streams and
    # runs computed is read, not computed again.
    total = plan.streams * (len(scenarios) + 1)
    with using(ReferenceCache.for_daemon(settings.model_artifact, settings.state_dir)):
        make_stage = _stage_maker(host, specs, served.signals)
        bar = _progress(total, progress)
        try:
            records = evaluate(make_stage, clean, scenarios, plan, estimate=_estimator(served),
                               on_stream=lambda: bar.update(1))
        finally:
            bar.close()
    finished = time.perf_counter()
    seconds = {"seconds": round(finished - started, 1), "seconds_model": round(images_done - started, 1),
               "seconds_detectors": round(finished - images_done, 1)}
    if json_file is not None:
        _write_json(json_file, records, {"model": model.name, "images": held_out.source, "held_out": clean.rows,
                                         "clean_accuracy": clean.accuracy, **seconds,
                                         "reference": served.description})
        if str(json_file) == "-":
            return
    for line in _table(records, plan, clean, held_out.source, model.name):
        click.echo(line)
    click.echo(f"took {seconds['seconds']:.1f} s: {seconds['seconds_model']:.1f} s loading the model and running it "
               f"over {len(scenarios) + 1} image sets, {seconds['seconds_detectors']:.1f} s in {len(specs)} detectors "
               f"over {total} streams of {plan.length} images")


def _estimator(served: ServedReference) -> Callable[[Any], float] | None:
    """``monitord_estimated_accuracy``'s estimate of a scenario's accuracy, where the reference
    is labelled (it needs the reference's accuracy and confidences)."""
    from monitord.monitor.estimated_accuracy import estimate_accuracy

    accuracy, confidences = served.description.get("accuracy"), served.signals.get("confidence")
    if accuracy is None or not confidences:
        return None
    return lambda signals: estimate_accuracy(accuracy, confidences, signals["confidence"])


def _image_sets(model: Model, settings: Settings, data: Path | None, contents: FolderContents | None,
                kinds: Sequence[str], shares: Sequence[Fraction], mix_classes: str | None, seed: int,
                progress: bool) -> tuple[ServedReference, ImageSignals, list[Scenario], HeldOut]:
    """The served reference, the clean set's signals, every scenario and the held-out images."""
    import numpy as np
    from monitord.reference import ReferenceError, reference_for
    from monitord.reference.serving import STREAM

    from .evaluation import Scenario
    from .evaluation_images import (
        Corruption,
        corrupted_files,
        held_out_digits_set,
        held_out_folder,
        model_signals,
    )

    try:
        served = reference_for(model, settings.model_artifact)
    except ReferenceError as error:
        raise EvaluationError(str(error)) from None
    if served.source == STREAM:
        raise EvaluationError(f"model {model.name} has no reference in {settings.model_artifact}; detectors would "
                              "judge the stream against its own first images. Build one with `monitord reference "
                              "DIR` from validation images, then evaluate")
    max_pixels = settings.pipeline.max_image_pixels
    names = list(model.class_names)
    favoured = _mix_classes(mix_classes, names) if "class-mix" in kinds else []
    held_out = (held_out_folder(data, contents, names, max_pixels) if data is not None and contents is not None
                else held_out_digits_set(names))
    pixel_kinds = [kind for kind in kinds if kind != "class-mix"]
    bar = _progress(1 + len(pixel_kinds) * len(shares), progress, "images")
    try:
        clean = model_signals(model, held_out.files, served, max_pixels=max_pixels)
        bar.update(1)
        scenarios = []
        for kind in kinds:
            for share in shares:
                corruption = Corruption(kind, float(share))
                if kind == "class-mix":
                    rows = np.flatnonzero(np.isin(clean.labels, [names.index(name) for name in favoured]))
                    if len(rows) == 0:
                        raise EvaluationError(f"no held-out image is of class {', '.join(favoured)}; choose "
                                              "classes the images have with --mix-classes")
                    scenarios.append(Scenario(corruption, clean, rows, float(corruption.amount)))
                    continue
                files = corrupted_files(held_out, corruption, seed)
                scenarios.append(Scenario(corruption, model_signals(model, files, served, max_pixels=max_pixels)))
                bar.update(1)
    finally:
        bar.close()
    return served, clean, scenarios, held_out


def _mix_classes(text: str | None, names: list[str]) -> list[str]:
    if text is None:
        return names[: max(1, len(names) // 2)]
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in names]
    if unknown or not chosen:
        raise EvaluationError(f"--mix-classes {text!r} names {', '.join(unknown) or 'nothing'}, which is no class "
                              f"of the model; its classes are {', '.join(names[:10])}"
                              f"{' ...' if len(names) > 10 else ''}")
    return chosen


def _usable_specs(specs: Sequence[DetectorSpec], available: set[str]) -> list[DetectorSpec]:
    usable = []
    for spec in specs:
        missing = [name for name in spec.signals if name not in available]
        if missing:
            click.echo(f"warning: detector {spec.label} watches {', '.join(missing)}, which this model does not "
                       "give; it is left out", err=True)
        else:
            usable.append(spec)
    if not usable:
        raise EvaluationProblem("none of the configured detectors watches a signal this model gives; check "
                                "`signal` in the `detectors` settings")
    return usable


def _stage_maker(host: PluginHost, specs: list[DetectorSpec],
                 reference: dict[str, list[float]]) -> Callable[[], DetectorStage]:
    """Builds the detectors afresh, as the daemon does (under the caller's reference cache)."""
    from monitord.detectors import DetectorStage
    from monitord.metrics import Metrics

    metrics = Metrics()

    def make_stage() -> DetectorStage:
        return DetectorStage.build(specs, lambda kind: host.factory("detector", kind), reference, metrics)

    try:
        make_stage()  # a bad detector setting fails here, once, with its message
    except (ValueError, PluginError) as error:
        raise EvaluationProblem(f"the configured detectors cannot start: {error}") from None
    return make_stage


def _write_json(target: Path, records: list[ScenarioRecord], about: dict[str, Any]) -> None:
    document = {"about": about, "records": [record.to_json() for record in records]}
    text = json.dumps(document, indent=2) + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
    else:
        target.write_text(text, encoding="utf-8")


def _table(records: list[ScenarioRecord], plan: StreamPlan, clean: ImageSignals, source: str,
           model: str) -> list[str]:
    estimated = any(record.estimated_accuracy is not None for record in records)
    lines = [f"model {model}: {clean.rows} held-out images ({source}), accuracy {clean.accuracy:.1%}",
             f"{plan.streams} streams per scenario, each {plan.clean} clean images then {plan.drifted} drifted; "
             f"false alarms counted on {plan.streams} clean streams of {plan.length} images"]
    header = ["scenario", "accuracy", *(["estimated"] if estimated else []), "detector", "detected", "median",
              "p90", "false alarms", "per 1,000"]
    rows = []
    for record in records:
        rows.append([record.scenario, f"{record.accuracy:.1%}",
                     *([_share(record.estimated_accuracy)] if estimated else []), record.detector,
                     f"{record.detected}/{record.streams}", _delay(record.delay_median), _delay(record.delay_p90),
                     str(record.false_alarms), f"{record.false_alarms_per_1000:.3f}"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines.append("  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip())
    previous = None
    for record, row in zip(records, rows):
        if previous is not None and record.scenario != previous:
            lines.append("")
        previous = record.scenario
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return lines


def _delay(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _progress(total: int, shown: bool, unit: str = "stream") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluate", unit=unit, file=sys.stderr, disable=not shown)
