"""``monitord replay``: run one detector over recorded signal values, for tuning.

The detector is built by the same plugin factory the daemon uses, from the same kind of
settings entry, so what replay finds is what the daemon would find on that stream. The
input is read in chunks and each chunk is one ``update`` call, as micro-batches are.
The reference can come from a file, from the start of the input, or from a model
artifact's saved reference signals, the daemon's default.

With ``--calibrate`` the input is taken as clean (no drift in it), so every drift event is
a false alarm, and replay says how often they came: the observed run length between
them, its 95 % interval, and whether that is consistent with the ERT the detector was
calibrated to. It is how to check an ``ert`` setting on one's own recorded signals.

Every input replay cannot use ends it with one line on standard error and exit status 2.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple

import click
import numpy as np

from monitord.builtin.commands import config_option
from monitord.detectors import model_reference
from monitord.reference import ReferenceError, read_reference
from monitord.plugins import PluginError, PluginHost
from monitord.settings import DetectorSpec, SettingsError, load_settings

#: Samples per ``update`` call: a large micro-batch.
CHUNK = 4096
#: The file of a model artifact that holds its ``reference_signals`` (plain JSON, so
#: replay needs no model framework to read it).
METADATA_FILE = "metadata.json"


class ReplayError(click.ClickException):
    """Input replay cannot use: said on one line of standard error, exit status 2."""

    exit_code = 2


class Chunk(NamedTuple):
    """Up to CHUNK samples, (n,) or (n, d), and the input line each came from."""

    values: np.ndarray
    lines: list[int]


def parse_param(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it is JSON (numbers, booleans,
    lists), else as a string: ``direction=down`` needs no quotes."""
    key, separator, raw = text.partition("=")
    if not separator or not key.strip():
        raise click.BadParameter(f"expected key=value, got {text!r}", param_hint="--param")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def read_rows(stream: IO[str], name: str) -> Iterator[tuple[int, list[float]]]:
    """``(line number, values)`` for every non-blank, non-comment line."""
    for number, line in enumerate(stream, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            values = [float(field) for field in text.split(",")]
        except ValueError:
            raise ReplayError(
                f"{name}, line {number}: {text[:60]!r} is not a number or comma-separated numbers"
            ) from None
        yield number, values


def read_chunks(stream: IO[str], name: str, width: int | None = None, expected: str | None = None) -> Iterator[Chunk]:
    """Chunks of up to CHUNK rows, every row ``width`` values wide (the first row's when
    ``width`` is None); ``expected`` says in an error where that width comes from."""
    rows: list[list[float]] = []
    lines: list[int] = []
    for number, values in read_rows(stream, name):
        if width is None:
            width = len(values)
        elif len(values) != width:
            why = expected or f"earlier lines had {width}"
            raise ReplayError(f"{name}, line {number}: {len(values)} value(s) where {why}")
        rows.append(values)
        lines.append(number)
        if len(rows) == CHUNK:
            yield Chunk(_array(rows), lines)
            rows, lines = [], []
    if rows:
        yield Chunk(_array(rows), lines)


def _array(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float64)
    return array[:, 0] if array.shape[1] == 1 else array


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def artifact_reference(artifact: Path, signals: list[str], named_by: str = "--reference-from") -> np.ndarray:
    """The reference the daemon would give a detector of ``signals``: the artifact's
    ``reference/`` (``monitord reference``), else the values saved under
    ``reference_signals`` in its metadata.json. ``named_by`` says in an error where
    ``artifact`` came from."""
    if artifact.is_dir():
        try:
            built = read_reference(artifact)
        except ReferenceError as error:
            raise ReplayError(str(error)) from None
        if built is not None:
            return _reference_columns(built.signal_lists(), signals, str(artifact / "reference"))
    path = artifact / METADATA_FILE if artifact.is_dir() or not artifact.exists() else artifact
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReplayError(
            f"{path} does not exist: {named_by} must name a model artifact folder (written by `monitord train`)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReplayError(f"{path} cannot be read as JSON ({error})") from None
    saved = metadata.get("reference_signals") if isinstance(metadata, dict) else None
    if not isinstance(saved, dict) or not saved:
        raise ReplayError(f"{path} holds no reference_signals; build one with `monitord reference DIR`, or give "
                          "the reference with --reference FILE")
    return _reference_columns(saved, signals, str(path))


def _reference_columns(saved: dict, signals: list[str], path: str) -> np.ndarray:
    missing = [name for name in signals if not isinstance(saved.get(name), list) or not saved[name]]
    if missing:
        raise ReplayError(
            f"{path} has no reference for signal(s) {', '.join(missing)}; it has "
            f"{', '.join(sorted(saved))} (name them with --signal)"
        )
    lengths = {name: len(saved[name]) for name in signals}
    if len(set(lengths.values())) != 1:
        raise ReplayError(f"{path} holds references of different lengths for {lengths}; they must be equal")
    try:
        reference = model_reference(DetectorSpec(type="replay", signal=signals), saved)
    except (TypeError, ValueError):
        raise ReplayError(f"{path}: the reference of {', '.join(signals)} is not a list of numbers") from None
    assert reference is not None  # every signal was checked above
    return reference


def _signal_names(given: tuple[str, ...]) -> list[str]:
    return [name.strip() for text in given for name in text.split(",") if name.strip()]


def replay_command() -> click.Command:
    @click.command("replay")
    @click.option("--detector", "-d", "detector_type", required=True, help="Detector type, e.g. pht, iks, nm_ddm, ddm.")
    @click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                  help="A detector parameter, repeatable: --param threshold=20 --param direction=down.")
    @click.option("--signal", "-s", "signal_names", multiple=True, metavar="NAME",
                  help="The signal(s) the input holds, one per column (repeat, or separate with commas): "
                       "needed to find the model's reference.")
    @click.option("--reference", "-r", type=click.File("r"),
                  help="Reference values, same form as the input. Default: the start of the input.")
    @click.option("--reference-from", "artifact", type=click.Path(path_type=Path), metavar="ARTIFACT",
                  help="Take the reference from a model artifact folder (its metadata.json's "
                       "reference_signals), as the daemon does.")
    @click.option("--model-reference", is_flag=True,
                  help="Like --reference-from, with the artifact the settings name (model.artifact).")
    @click.option("--calibrate", is_flag=True,
                  help="FILE holds clean samples: print how often the detector raised false alarms (drift "
                       "events) on them, the run length between them with its 95 % interval, and whether "
                       "it is consistent with the detector's ert, instead of the events.")
    @click.option("--json", "as_json", is_flag=True, help="With --calibrate: print the result as one JSON object.")
    @config_option
    @click.argument("input_file", metavar="FILE|-", type=click.File("r"))
    @click.pass_obj
    def replay(
        host: PluginHost,
        detector_type: str,
        params: tuple[str, ...],
        signal_names: tuple[str, ...],
        reference: IO[str] | None,
        artifact: Path | None,
        model_reference: bool,
        calibrate: bool,
        as_json: bool,
        config: Path | None,
        input_file: IO[str],
    ) -> None:
        """Run a detector over FILE (one sample per line: a number, or comma-separated
        numbers for a detector over several signals; - reads standard input).

        Prints one JSON object per event (index from 0 over the input, level, statistic,
        threshold), then a summary (samples, events, seconds spent in the detector,
        whether its test ever ran, its final state). Without a reference option the
        detector takes its reference from the start of the input, as it does in the
        daemon without a model reference. Bad input stops it with one line on standard
        error and exit status 2.

        With --calibrate, FILE is taken as clean: replay prints how often the detector raised
        false alarms on it against its ert (--json: as one JSON object) instead of the events.
        """
        if as_json and not calibrate:
            raise ReplayError("--json goes with --calibrate (without it replay prints JSON lines already)")
        try:
            factory = host.factory("detector", detector_type)
        except PluginError as error:
            raise ReplayError(str(error)) from None
        chosen = [name for name, used in (("--reference", reference is not None),
                                          ("--reference-from", artifact is not None),
                                          ("--model-reference", model_reference)) if used]
        if len(chosen) > 1:
            raise ReplayError(f"give one reference: {' and '.join(chosen)} were both given")
        signals = _signal_names(signal_names)
        named = f"--signal names {len(signals)} ({', '.join(signals)})" if signals else None
        reference_values = None
        if model_reference:
            try:
                artifact = load_settings(config).model_artifact
            except SettingsError as error:
                raise ReplayError(str(error)) from None
        if artifact is not None:
            if not signals:
                raise ReplayError(
                    "name the signal(s) the input holds with --signal (e.g. --signal entropy), so that "
                    "the model's reference for them can be found"
                )
            named_by = "model.artifact (from the settings)" if model_reference else "--reference-from"
            reference_values = artifact_reference(artifact, signals, named_by)
        elif reference is not None:
            chunks = list(read_chunks(reference, reference.name, len(signals) or None, named))
            if not chunks:
                raise ReplayError(f"{reference.name} holds no values")
            reference_values = np.concatenate([chunk.values for chunk in chunks])

        width: int | None = len(signals) or None
        if width is None and reference_values is not None:
            width = 1 if reference_values.ndim == 1 else reference_values.shape[1]
            named = f"the reference has {width}"
        chunks = read_chunks(input_file, input_file.name, width, named)
        first = next(chunks, None)
        if first is None:
            raise ReplayError(f"{input_file.name} holds no values")
        width = 1 if first.values.ndim == 1 else first.values.shape[1]
        if not signals:
            signals = ["value"] if width == 1 else [f"value{i}" for i in range(width)]
        signal: str | list[str] = signals[0] if width == 1 else signals
        try:
            spec = DetectorSpec(type=detector_type, signal=signal, name="replay", **dict(map(parse_param, params)))
            detector = factory(spec, reference_values)
        except ValueError as error:
            raise ReplayError(str(error)) from None

        samples = events = drifts = exposure = 0
        spent = 0.0
        tested = False
        out = sys.stdout
        for chunk in _chain(first, chunks):
            exposure += max(0, len(chunk.values) - detector.state.samples_needed)
            started = time.perf_counter()
            try:
                raised = detector.update(chunk.values)
            except ValueError as error:
                raise ReplayError(f"{input_file.name}, {_where(error, chunk.lines)}: {error}") from None
            spent += time.perf_counter() - started
            drifts += sum(event.level == "drift" for event in raised)
            for event in raised:
                if calibrate:
                    continue
                record = {"index": samples + event.index, "level": event.level,
                          "statistic": _number(event.statistic), "threshold": _number(event.threshold)}
                out.write(json.dumps(record) + "\n")
            samples += len(chunk.values)
            events += len(raised)
            tested = tested or detector.state.ready
        state = detector.state
        if not tested and state.reference_samples == 0:
            raise ReplayError(
                f"{input_file.name} holds {samples} samples, all taken into the reference the detector "
                f"collects from the start of the input; it needs {state.samples_needed} more before it can "
                "test anything: give a longer input, a reference (--reference FILE, --reference-from "
                "ARTIFACT or --model-reference), or a smaller reference_size"
            )
        if calibrate:
            _report_calibration(detector_type, state.ert, samples, exposure, drifts, as_json)
            return
        summary = {
            "summary": True,
            "detector": detector_type,
            "params": getattr(detector, "params", lambda: dict(spec.params()))(),
            "samples": samples,
            "events": events,
            "seconds": round(spent, 6),
            "tested": tested,
            "final": {"level": state.level, "statistic": _number(state.statistic),
                      "threshold": _number(state.threshold), "p_value": _number(state.p_value),
                      "ready": state.ready, "samples_needed": state.samples_needed,
                      "reference_samples": state.reference_samples},
        }
        out.write(json.dumps(summary) + "\n")
        if not tested:
            click.echo(
                f"monitord replay: {detector_type} never became ready: it needs {state.samples_needed} more "
                f"sample(s) before its test can run, so no event could be found; give a longer input",
                err=True,
            )

    return replay


def _report_calibration(
    detector_type: str, ert: float | None, samples: int, exposure: int, false_alarms: int, as_json: bool
) -> None:
    """How often a detector raised false alarms on clean samples, against its ERT."""
    try:
        from monitord_drift.ert import run_length
    except ImportError:  # the arithmetic lives with the calibrated detectors
        raise ReplayError("--calibrate needs the monitord-drift plugin (pip install monitord-drift)") from None
    estimate, low, high = run_length(false_alarms, exposure)
    if ert is None:
        verdict = "the detector has no ert to compare with (set ert on pht, iks or bernoulli_cusum)"
    elif high < ert:
        verdict = f"false alarms come more often than an ert of {ert:g} allows"
    elif low > ert:
        verdict = f"consistent: false alarms come less often than an ert of {ert:g} (conservative)"
    else:
        verdict = f"consistent with an ert of {ert:g}"
    result = {
        "detector": detector_type, "samples": samples, "samples_tested": exposure, "false_alarms": false_alarms,
        "run_length": _number(estimate), "run_length_low": _number(low), "run_length_high": _number(high),
        "ert": ert, "consistent": None if ert is None else bool(high >= ert), "verdict": verdict,
    }
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    sys.stdout.write(
        f"{detector_type}: {samples:,} samples, {exposure:,} tested, {false_alarms} false alarm(s)\n"
        f"  run length {_samples(estimate)} samples (95 % interval {_samples(low)} to {_samples(high)})\n"
        f"  ert {'not set' if ert is None else f'{ert:,.0f}'}: {verdict}\n"
    )


def _samples(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:,.0f}"


def _where(error: ValueError, lines: list[int]) -> str:
    """The input line of the value a detector refused, when it says which (``index``)."""
    index = getattr(error, "index", None)
    if isinstance(index, int) and 0 <= index < len(lines):
        return f"line {lines[index]}"
    return f"lines {lines[0]}-{lines[-1]}"


def _chain(first: Chunk, rest: Iterator[Chunk]) -> Iterator[Chunk]:
    yield first
    yield from rest
