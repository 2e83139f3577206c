"""Predictions logs the way the daemon writes them, from digits run through the real model.

The held-out digits (clean, or rotated) go once through the serving path
(``monitord_torchvision.evaluation_images.model_signals``: decode, preprocess, predict, the
reference's embedding projection); a log is a seeded draw of those rows, written by the
daemon's own ``PredictionsLog``. The same rows can be fed to monitord's detectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from monitord.items import Prediction
from monitord.predictions_log import PredictionsLog, predictions_log_path
from monitord.reference import reference_for
from monitord_torchvision.evaluation_images import (
    ERROR_SIGNAL,
    Corruption,
    ImageSignals,
    corrupted_files,
    held_out_digits_set,
    model_signals,
)

MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class DigitRows:
    """What the model made of each held-out digit (one row per image)."""

    signals: ImageSignals
    class_names: tuple[str, ...]

    def stream(self, count: int, seed: int) -> dict[str, np.ndarray]:
        """``count`` rows drawn with replacement (seeded): signal → values, ``label`` included."""
        rows = np.random.default_rng(seed).integers(0, self.signals.rows, size=count)
        drawn = {name: values[rows] for name, values in self.signals.signals.items()}
        drawn["label"] = self.signals.labels[rows]
        return drawn


def digit_rows(model, artifact: Path, rotation: float | None = None) -> DigitRows:
    """The held-out digits through ``model``, rotated by ``rotation`` degrees if given."""
    served = reference_for(model, artifact)
    held_out = held_out_digits_set(model.class_names)
    files = held_out.files
    if rotation is not None:
        files = corrupted_files(held_out, Corruption("rotation", rotation / 90.0), seed=0)
    return DigitRows(model_signals(model, files, served, max_pixels=MAX_PIXELS), tuple(model.class_names))


def write_log(state_dir: Path, rows: DigitRows, stream: dict[str, np.ndarray], *, labelled: bool = False,
              start: datetime | None = None, spacing: timedelta = timedelta(milliseconds=10),
              max_bytes: int = 50 << 20, backups: int = 5) -> Path:
    """Write ``stream`` as the daemon's predictions log in ``state_dir``, one batch of 64 at a time."""
    start = start or datetime.now(timezone.utc) - spacing * len(stream["label"])
    names = rows.class_names
    signal_names = [name for name in stream if name not in (ERROR_SIGNAL, "label")]
    log = PredictionsLog(predictions_log_path(state_dir), max_bytes, backups)
    try:
        count = len(stream["label"])
        for first in range(0, count, 64):
            batch = []
            for row in range(first, min(first + 64, count)):
                index = int(stream["predicted_class"][row])
                batch.append(Prediction(
                    id=f"digit-{row}", source="test", class_name=names[index], class_index=index,
                    confidence=float(stream["confidence"][row]),
                    signals={name: float(stream[name][row]) for name in signal_names},
                    time=(start + spacing * row).isoformat(timespec="milliseconds"),
                    label=names[int(stream["label"][row])] if labelled else None))
            log.write(batch)
    finally:
        log.close()
    return predictions_log_path(state_dir)
