"""How far the model's confidence can be believed, measured on labelled reference images.

A reliability table (confidence in equal-width bins, and the accuracy in each) and its
expected calibration error (Guo et al., 2017, "On Calibration of Modern Neural
Networks"). A confidence that drifts is only alarming in proportion to what it meant on
the reference; the table says what it meant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 10


@dataclass(frozen=True)
class Calibration:
    """Per confidence bin ``[edges[i], edges[i+1])``: images, mean confidence, accuracy."""

    edges: list[float]
    count: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]
    #: Expected calibration error: the count-weighted mean of |accuracy - confidence|.
    ece: float

    @classmethod
    def measure(cls, confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Calibration:
        confidence = np.asarray(confidence, dtype=np.float64)
        correct = np.asarray(correct, dtype=np.float64)
        edges = np.linspace(0.0, 1.0, bins + 1)
        which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
        count = np.bincount(which, minlength=bins)
        sum_confidence = np.bincount(which, weights=confidence, minlength=bins)
        sum_correct = np.bincount(which, weights=correct, minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_confidence = sum_confidence / count
            accuracy = sum_correct / count
        filled = count > 0
        total = int(count.sum())
        ece = float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])) / total) if total else 0.0
        return cls(
            edges=[float(edge) for edge in edges],
            count=[int(n) for n in count],
            confidence=[float(v) if ok else None for v, ok in zip(mean_confidence, filled)],
            accuracy=[float(v) if ok else None for v, ok in zip(accuracy, filled)],
            ece=ece,
        )

    def to_json(self) -> dict:
        return {"edges": self.edges, "count": self.count, "confidence": self.confidence,
                "accuracy": self.accuracy, "ece": self.ece}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        return cls(list(data["edges"]), list(data["count"]), list(data["confidence"]), list(data["accuracy"]),
                   float(data["ece"]))
