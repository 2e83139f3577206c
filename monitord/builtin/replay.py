"""``monitord replay``: run one detector over recorded signal values, for tuning.

The detector is built by the same plugin factory the daemon uses, from the same kind of
settings entry, so what replay finds is what the daemon would find on that stream. The
input is read in chunks and each chunk is one ``update`` call, as micro-batches are.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any, Iterator

import click
import numpy as np

from monitord.plugins import PluginError, PluginHost
from monitord.settings import DetectorSpec

#: Samples per ``update`` call: a large micro-batch.
CHUNK = 4096


class InputError(click.ClickException):
    """A line of the input could not be read as numbers."""


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
            raise InputError(
                f"{name}, line {number}: {text[:60]!r} is not a number or comma-separated numbers"
            ) from None
        yield number, values


def read_chunks(stream: IO[str], name: str, width: int | None = None) -> Iterator[np.ndarray]:
    """Arrays of up to CHUNK rows: (n,) for one value per line, (n, d) for d."""
    rows: list[list[float]] = []
    for number, values in read_rows(stream, name):
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise InputError(f"{name}, line {number}: {len(values)} values where earlier lines had {width}")
        rows.append(values)
        if len(rows) == CHUNK:
            yield _array(rows)
            rows = []
    if rows:
        yield _array(rows)


def _array(rows: list[list[float]]) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float64)
    return array[:, 0] if array.shape[1] == 1 else array


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def replay_command() -> click.Command:
    @click.command("replay")
    @click.option("--detector", "-d", "detector_type", required=True, help="Detector type, e.g. pht, iks, nm_ddm, ddm.")
    @click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
                  help="A detector parameter, repeatable: --param threshold=20 --param direction=down.")
    @click.option("--reference", "-r", type=click.File("r"),
                  help="Reference values, same form as the input. Default: the start of the input.")
    @click.argument("input_file", metavar="FILE|-", type=click.File("r"))
    @click.pass_obj
    def replay(host: PluginHost, detector_type: str, params: tuple[str, ...], reference: IO[str] | None, input_file: IO[str]) -> None:
        """Run a detector over FILE (one sample per line: a number, or comma-separated
        numbers for a detector over several signals; - reads standard input).

        Prints one JSON object per event (index from 0 over the input, level, statistic,
        threshold), then a summary (samples, events, seconds spent in the detector).
        Without --reference the detector takes its reference from the start of the
        input, as it does in the daemon without a model reference.
        """
        try:
            factory = host.factory("detector", detector_type)
        except PluginError as error:
            raise click.ClickException(str(error)) from None
        reference_values = None
        if reference is not None:
            chunks = list(read_chunks(reference, reference.name))
            if not chunks:
                raise click.ClickException(f"{reference.name} holds no values")
            reference_values = np.concatenate(chunks)
        chunks = read_chunks(input_file, input_file.name,
                             None if reference_values is None else (1 if reference_values.ndim == 1 else reference_values.shape[1]))
        first = next(chunks, None)
        if first is None:
            raise click.ClickException(f"{input_file.name} holds no values")
        width = 1 if first.ndim == 1 else first.shape[1]
        signal: str | list[str] = "value" if width == 1 else [f"value{i}" for i in range(width)]
        try:
            spec = DetectorSpec(type=detector_type, signal=signal, name="replay", **dict(map(parse_param, params)))
            detector = factory(spec, reference_values)
        except ValueError as error:
            raise click.ClickException(str(error)) from None

        samples = events = 0
        spent = 0.0
        out = sys.stdout
        for chunk in _chain(first, chunks):
            started = time.perf_counter()
            raised = detector.update(chunk)
            spent += time.perf_counter() - started
            for event in raised:
                record = {"index": samples + event.index, "level": event.level,
                          "statistic": _number(event.statistic), "threshold": _number(event.threshold)}
                out.write(json.dumps(record) + "\n")
            samples += len(chunk)
            events += len(raised)
        state = detector.state
        summary = {
            "summary": True,
            "detector": detector_type,
            "params": getattr(detector, "params", lambda: dict(spec.params()))(),
            "samples": samples,
            "events": events,
            "seconds": round(spent, 6),
            "final": {"level": state.level, "statistic": _number(state.statistic),
                      "threshold": _number(state.threshold), "p_value": _number(state.p_value)},
        }
        out.write(json.dumps(summary) + "\n")

    return replay


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
