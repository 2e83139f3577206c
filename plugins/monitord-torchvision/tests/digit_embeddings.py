"""The projected embedding (``embedding_1`` …) of held-out digits, clean or corrupted, as the
daemon computes it: PNG bytes → the model's preprocessing → ``BatchResult.embedding`` →
the artifact's reference projection. Shared by the embedding-detector tests and
benchmarks/embedding_detector.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monitord.reference.store import read_reference

from monitord_torchvision.digits import decode_png, digit_png_bytes, held_out_digits
from monitord_torchvision.drifts import drift_image
from monitord_torchvision.inference import TorchvisionModel

#: A milder amount of each pixel corruption than its default (see drifts.DRIFT_KINDS).
MILD_AMOUNTS = {"rotation": 30.0, "noise": 50.0, "blur": 0.5, "contrast": 0.6, "brightness": 50.0, "invert": 0.3}


def reference_embedding(artifact: Path) -> tuple[list[str], np.ndarray]:
    """The embedding signals' names and the (n, k) rows of the artifact's reference."""
    saved = read_reference(artifact)
    if saved is None or saved.projection is None:
        raise ValueError(f"{artifact} has no reference with an embedding projection; run `monitord reference`")
    names = saved.projection.names
    signals = saved.signal_lists()
    return names, np.column_stack([np.asarray(signals[name], dtype=np.float64) for name in names])


def held_out_embedding(
    model: TorchvisionModel, artifact: Path, kind: str | None = None, amount: float | None = None, seed: int = 0
) -> np.ndarray:
    """(360, k) projected embeddings of the held-out digits, each corrupted by ``kind`` at
    ``amount`` (its default when None) or clean when ``kind`` is None."""
    saved = read_reference(artifact)
    assert saved is not None and saved.projection is not None
    rng = np.random.default_rng(seed)
    images, _ = held_out_digits()
    if kind is not None:
        images = [drift_image(image, kind, amount, rng=rng) for image in images]
    inputs = np.stack([model.preprocess(decode_png(digit_png_bytes(image))) for image in images])
    result = model.predict(inputs)
    projected = saved.projection.project(result.embedding)
    return np.column_stack([projected[name] for name in saved.projection.names])
