"""What crosses the boundary between inference and monitoring: one entry a micro-batch.

Inference publishes a ``PredictionBatch`` per model batch (the predictions with the
signals they came with, in columns, since detectors take whole columns) and a
``LabelBatch`` per ``POST /v1/feedback``; the monitor applies them in stream order. One
entry a batch, not one a record: on Redis that was measured at a tenth of the producer's
cost and a fifteenth to a sixtieth of the consumer's.

``encode``/``decode`` give a compact binary form for transports that leave the process
(the in-process one passes the objects): a small JSON header (counts, names, the strings
of the batch) followed by each numeric column's raw little-endian bytes, so a batch of 64
decodes with a handful of ``numpy.frombuffer`` calls instead of 64 dictionaries.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from monitord.items import Prediction

#: Bumped whenever the encoded layout changes; a reader refuses other versions.
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHI")  # magic, version, JSON header length
_PREDICTIONS = b"MDPB"
_LABELS = b"MDLB"


class EntryFormatError(ValueError):
    """Bytes that are not an entry this version can read."""


@dataclass(frozen=True)
class PredictionBatch:
    """One model batch: each prediction, and every signal as a column (rows in order)."""

    predictions: Sequence[Prediction]
    signals: Mapping[str, np.ndarray]
    #: The inference process that made it (``alerts.instance`` of that process).
    origin: str = ""

    def __len__(self) -> int:
        return len(self.predictions)

    def encode(self) -> bytes:
        names = sorted(self.signals)
        predictions = self.predictions
        header = {
            "origin": self.origin,
            "count": len(predictions),
            "signals": names,
            "ids": [p.id for p in predictions],
            "sources": _runs([p.source for p in predictions]),
            "classes": [p.class_name for p in predictions],
            "times": _runs([p.time for p in predictions]),
            "labels": [p.label for p in predictions],
        }
        columns = [np.asarray([p.class_index for p in predictions], dtype="<i8"),
                   np.asarray([p.confidence for p in predictions], dtype="<f8")]
        columns += [np.ascontiguousarray(self.signals[name], dtype="<f8") for name in names]
        return _frame(_PREDICTIONS, header, columns)

    @classmethod
    def decode(cls, data: bytes) -> PredictionBatch:
        header, body = _unframe(data, _PREDICTIONS)
        try:
            count, names = int(header["count"]), list(header["signals"])
            ids, classes, labels = header["ids"], header["classes"], header["labels"]
            sources, times = _expand(header["sources"], count), _expand(header["times"], count)
            arrays = _columns(body, count, ["<i8", "<f8"] + ["<f8"] * len(names))
        except (KeyError, TypeError, ValueError) as error:
            raise EntryFormatError(f"a prediction batch that cannot be read: {error}") from None
        class_index, confidence, *values = arrays
        signals = dict(zip(names, values))
        listed = {name: column.tolist() for name, column in signals.items()}
        predictions = [
            Prediction(id=ids[row], source=sources[row], class_name=classes[row],
                       class_index=int(class_index[row]), confidence=float(confidence[row]),
                       signals={name: listed[name][row] for name in names}, time=times[row],
                       label=labels[row])
            for row in range(count)
        ]
        return cls(predictions, signals, str(header.get("origin", "")))


@dataclass(frozen=True)
class LabelBatch:
    """Ground truth for earlier predictions, by id: one ``POST /v1/feedback``.

    ``reply_to`` names where the monitor sends each label's verdict (joined, unknown,
    late, duplicate, held), so the client can be told; empty when nobody waits.
    """

    labels: Sequence[tuple[str, str]]
    reply_to: str = ""
    origin: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self) -> bytes:
        header = {"labels": [list(pair) for pair in self.labels], "reply_to": self.reply_to, "origin": self.origin}
        return _frame(_LABELS, header, [])

    @classmethod
    def decode(cls, data: bytes) -> LabelBatch:
        header, _ = _unframe(data, _LABELS)
        try:
            labels = [(str(prediction_id), str(label)) for prediction_id, label in header["labels"]]
        except (KeyError, TypeError, ValueError) as error:
            raise EntryFormatError(f"a label batch that cannot be read: {error}") from None
        return cls(labels, str(header.get("reply_to", "")), str(header.get("origin", "")))


Entry = PredictionBatch | LabelBatch


def decode_entry(data: bytes) -> Entry:
    """Either kind of entry, told apart by its magic bytes."""
    if data[:4] == _PREDICTIONS:
        return PredictionBatch.decode(data)
    if data[:4] == _LABELS:
        return LabelBatch.decode(data)
    raise EntryFormatError(f"not a monitord entry (starts with {bytes(data[:4])!r})")


@dataclass(frozen=True)
class Verdict:
    """How one label fared at the monitor: a ``monitord_feedback_total`` outcome, or
    ``held`` (its prediction is not known yet; it waits ``feedback.grace_seconds``)."""

    id: str
    outcome: str
    correct: bool | None = None
    predicted: str | None = None
    reason: str | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        record = {"id": self.id, "outcome": self.outcome, "correct": self.correct, "predicted": self.predicted,
                  "reason": self.reason, **self.extra}
        return {key: value for key, value in record.items() if value is not None}

    @classmethod
    def from_json(cls, record: Mapping) -> Verdict:
        known = {"id", "outcome", "correct", "predicted", "reason"}
        return cls(str(record["id"]), str(record["outcome"]), record.get("correct"), record.get("predicted"),
                   record.get("reason"), {k: v for k, v in record.items() if k not in known})


@dataclass(frozen=True)
class ModelCard:
    """What the monitor needs to know of the model, which it never loads: its name, its
    classes (labels are checked against them), the signals it produces and their reference
    values measured on held-out data. Inference publishes it when its model is loaded."""

    name: str
    class_names: tuple[str, ...]
    signals: tuple[str, ...]
    reference_signals: Mapping[str, Sequence[float]]
    #: Where the reference came from and what it holds (``monitord.reference.serving``), for
    #: ``/readyz`` and ``/v1/detectors``.
    reference: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "class_names": list(self.class_names), "signals": list(self.signals),
                "reference_signals": {name: list(map(float, values)) for name, values in self.reference_signals.items()},
                "reference": dict(self.reference)}

    @classmethod
    def from_json(cls, record: Mapping) -> ModelCard:
        try:
            return cls(str(record["name"]), tuple(map(str, record["class_names"])), tuple(map(str, record["signals"])),
                       {str(name): [float(v) for v in values] for name, values in record["reference_signals"].items()},
                       dict(record.get("reference") or {}))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise EntryFormatError(f"a model card that cannot be read: {error}") from None


# -- the binary frame ------------------------------------------------------------------


def _frame(magic: bytes, header: dict, columns: list[np.ndarray]) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([_HEADER.pack(magic, FORMAT_VERSION, len(text)), text, *(column.tobytes() for column in columns)])


def _unframe(data: bytes, magic: bytes) -> tuple[dict, memoryview]:
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise EntryFormatError(f"an entry of {len(view)} bytes is too short")
    found, version, length = _HEADER.unpack_from(view)
    if found != magic:
        raise EntryFormatError(f"expected an entry {magic!r}, found {found!r}")
    if version != FORMAT_VERSION:
        raise EntryFormatError(f"entry format version {version}; this monitord reads {FORMAT_VERSION} "
                               "(run the same monitord version on every node)")
    try:
        header = json.loads(bytes(view[_HEADER.size:_HEADER.size + length]))
    except ValueError as error:
        raise EntryFormatError(f"the entry's header is not JSON: {error}") from None
    return header, view[_HEADER.size + length:]


def _columns(body: memoryview, count: int, dtypes: list[str]) -> list[np.ndarray]:
    expected = 8 * count * len(dtypes)
    if len(body) != expected:
        raise ValueError(f"{len(body)} bytes of columns, expected {expected}")
    return [np.frombuffer(body, dtype=dtype, count=count, offset=8 * count * index).copy()
            for index, dtype in enumerate(dtypes)]


def _runs(values: list[str]) -> list[list]:
    """``[[value, repeats], ...]``: a batch's sources and times are mostly one value."""
    runs: list[list] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return runs


def _expand(runs: list[list], count: int) -> list[str]:
    values = [str(value) for value, repeats in runs for _ in range(int(repeats))]
    if len(values) != count:
        raise ValueError(f"{len(values)} values for {count} rows")
    return values
