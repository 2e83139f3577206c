"""A nearest-centroid classifier over downsampled gray pixels, as a monitord ``Model``.

No deep-learning framework: numpy and Pillow. It shows everything the core asks of a
model (``monitord/model.py``) and what it may offer besides: reference signals for the
detectors, an embedding per image, and a ``fingerprint``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import numpy as np
from monitord.model import BatchResult
from PIL import Image

from . import centroids as centroid_file

#: The signals every model of this plugin produces (declared to the daemon before loading).
SIGNALS: tuple[str, ...] = ("confidence", "margin", "distance", "predicted_class")


class NearestCentroidModel:
    """Classifies an image as the class whose mean image is nearest.

    Signals, per image: ``distance`` (RMS pixel difference to the nearest class mean, 0..1:
    how unlike any known class the image is), ``confidence`` and ``margin`` (the highest
    class probability, and its lead over the second, from a softmax of
    ``-distance / temperature`` over the classes) and ``predicted_class``.
    """

    name = "nearest_centroid"
    device = "cpu"

    def __init__(self, path: Path, temperature: float) -> None:
        self._centroids = centroid_file.load(path)
        self._temperature = float(temperature)
        self.class_names = self._centroids.class_names
        #: Weights (the file's bytes) and preprocessing (grid size inside the file, and the
        #: temperature): a snapshot or reference taken with another model must not be reused.
        self.fingerprint = hashlib.sha256(path.read_bytes() + repr(self._temperature).encode()).hexdigest()[:16]
        self.reference_signals = self._reference_signals()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(1, h, w) float32 in [0, 1]. Thread-safe: reads only immutable settings."""
        return centroid_file.features(image, self._centroids.size)[None, :, :]

    def predict(self, batch: np.ndarray) -> BatchResult:
        """Classify (N, 1, h, w); the embedding is the downsampled pixels themselves."""
        embedding = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1)
        return self._classify(embedding)

    def close(self) -> None:
        pass  # nothing held but arrays

    def _classify(self, rows: np.ndarray) -> BatchResult:
        pixels = rows.astype(np.float64)
        means = self._centroids.means.astype(np.float64)
        squared = (pixels**2).sum(axis=1, keepdims=True) - 2.0 * pixels @ means.T + (means**2).sum(axis=1)
        distances = np.sqrt(np.maximum(squared, 0.0) / pixels.shape[1])
        logits = -distances / self._temperature
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        class_index = probabilities.argmax(axis=1)
        ordered = np.sort(probabilities, axis=1)
        confidence = ordered[:, -1]
        margin = confidence - ordered[:, -2] if ordered.shape[1] > 1 else confidence
        return BatchResult(
            class_index=class_index.astype(np.int64),
            confidence=confidence,
            signals={
                "confidence": confidence,
                "margin": margin,
                "distance": distances.min(axis=1),
                "predicted_class": class_index.astype(np.float64),
            },
            embedding=rows,
        )

    def _reference_signals(self) -> Mapping[str, list[float]]:
        """The signals of the held-out images in the centroid file (empty when it has none:
        the detectors then take their reference from the stream)."""
        reference = self._centroids.reference
        if len(reference) == 0:
            return {}
        result = self._classify(reference)
        return {name: values.tolist() for name, values in result.signals.items()}
