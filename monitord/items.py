"""The data that crosses the pipeline: what a source submits and what it gets back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass
class WorkItem:
    """One image submitted by a source.

    ``payload`` is either the encoded bytes or a path the decode threads read, so the
    event loop never touches file contents.
    """

    id: str
    source: str
    payload: bytes | Path
    label: str | None = None
    received: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Prediction:
    """The outcome of an image the model classified."""

    id: str
    source: str
    class_name: str
    class_index: int
    confidence: float
    signals: dict[str, float]
    #: When the prediction was made, ISO 8601 in UTC.
    time: str
    label: str | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.label == self.class_name

    def json_line(self) -> str:
        """``to_json`` as one line of compact JSON, encoded once and kept.

        The predictions log and the folder source's ``<image>.json`` both write it.
        """
        line = self.__dict__.get("_json_line")
        if line is None:
            record = self.to_json()
            try:
                # orjson: a twentieth of the standard library's time, which the monitor paid
                # per prediction for the log (a non-finite signal becomes null, valid JSON).
                line = orjson.dumps(record).decode()
            except TypeError:
                # A file name that is not UTF-8 arrives with surrogates, which orjson refuses
                # and the standard library escapes (\udce9): readable, and read back the same.
                line = json.dumps(record, separators=(",", ":"))
            self.__dict__["_json_line"] = line
        return line

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "time": self.time,
            "class": self.class_name,
            "class_index": self.class_index,
            "confidence": self.confidence,
            "signals": self.signals,
        }
        if self.label is not None:
            record["label"] = self.label
            record["correct"] = self.correct
        return record


@dataclass(frozen=True)
class Rejection:
    """The outcome of an image the pipeline could not use, with a reason a person can act on.

    ``outcome`` is the ``monitord_images_total`` label: ``rejected`` for bad input,
    ``error`` for a failure of ours (the model raised).
    """

    id: str
    source: str
    reason: str
    outcome: str = "rejected"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "error": self.reason, "outcome": self.outcome}


Outcome = Prediction | Rejection
