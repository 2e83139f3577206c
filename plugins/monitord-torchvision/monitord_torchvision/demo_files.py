"""The files the demo shares with the daemon: images into the inbox, predictions back.

Images are written under a dot-name and renamed into place, so the folder source (which
skips dotfiles and ``.tmp`` names) never reads half a file. Each name carries the run id
and the image's number, ``demo-<run>-<seq>.png``, which is how predictions are matched
to images afterwards; with labels, the image goes in its class's sub-folder, the
ImageFolder layout from which the daemon learns the true class.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from .digits import digit_png_bytes
from .scenario import DemoImage


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class InboxWriter:
    """Where one demo run puts its images."""

    inbox: Path
    run: str
    #: Put each image in its class's sub-folder (``inbox/7/...``) so the daemon knows the
    #: true label and its error-rate detector has something to watch.
    labels: bool = True

    def relative(self, image: DemoImage) -> Path:
        name = f"demo-{self.run}-{image.seq:06d}.png"
        return Path(str(image.label), name) if self.labels else Path(name)

    def write(self, image: DemoImage) -> Path:
        path = self.inbox / self.relative(image)
        write_atomically(path, digit_png_bytes(image.pixels))
        return path

    def seq_of(self, image_id: str) -> int | None:
        """The image number in a prediction's ``id`` (its path under the inbox), if ours."""
        match = re.search(rf"(?:^|/)demo-{re.escape(self.run)}-(\d+)\.png$", image_id)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ImageSignals:
    """What the daemon said about one demo image."""

    seq: int
    confidence: float
    entropy: float
    correct: bool | None


def _signals(seq: int, record: dict) -> ImageSignals:
    signals = record.get("signals") or {}
    return ImageSignals(
        seq=seq,
        confidence=float(record["confidence"]),
        entropy=float(signals.get("entropy", float("nan"))),
        correct=record.get("correct"),
    )


def read_predictions_log(path: Path, writer: InboxWriter) -> dict[int, ImageSignals]:
    """This run's predictions from the daemon's JSON-lines log (``<state_dir>/predictions.jsonl``)."""
    found: dict[int, ImageSignals] = {}
    if not path.is_file():
        return found
    marker = f"demo-{writer.run}-"
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if marker not in line:
                continue
            try:
                record = json.loads(line)
                seq = writer.seq_of(record["id"])
                if seq is not None:
                    found[seq] = _signals(seq, record)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by rotation, or not a prediction
    return found


def read_prediction_files(processed: Path, writer: InboxWriter, images: list[DemoImage]) -> dict[int, ImageSignals]:
    """This run's predictions from the ``processed/<name>.json`` files beside the images."""
    found: dict[int, ImageSignals] = {}
    for image in images:
        path = processed / writer.relative(image)
        path = path.with_name(path.name + ".json")
        try:
            found[image.seq] = _signals(image.seq, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found
