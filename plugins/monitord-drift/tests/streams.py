"""Helpers the detector tests share: feeding a stream in pieces, and punching holes in it."""

from __future__ import annotations

import numpy as np


def with_holes(values: np.ndarray, holes) -> np.ndarray:
    """A copy of ``values`` with non-finite values put at ``(position, value)`` pairs."""
    values = values.copy()
    for position, value in holes:
        values[position % len(values)] = value
    return values


def run_in_pieces(detector, values, splits) -> list[tuple]:
    """Events (with global indices) of ``values`` fed in the pieces that ``splits`` cut."""
    cuts = sorted({cut % (len(values) + 1) for cut in splits} | {0, len(values)})
    events = []
    for start, end in zip(cuts[:-1], cuts[1:]):
        events += [(start + e.index, e.level, e.statistic, e.threshold) for e in detector.update(values[start:end])]
    return events
