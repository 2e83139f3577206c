"""Principal directions of the embedding, found on the reference images.

A model's embedding (its pooled backbone features, hundreds of dimensions) shows a
change of input before the confidence does, but detectors watch a few numbers per image.
Projecting it onto the top principal directions of the reference set keeps the directions
along which normal images vary most, and gives detectors low-dimensional signals
(``embedding_1`` … ``embedding_k``) whose reference distribution is known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Signal names of the projected embedding: ``embedding_1`` is the first principal direction.
SIGNAL_PREFIX = "embedding_"


def signal_names(components: int) -> list[str]:
    return [f"{SIGNAL_PREFIX}{index + 1}" for index in range(components)]


@dataclass(frozen=True)
class EmbeddingProjection:
    """``(embedding - mean) @ components.T``: the coordinates along the principal directions."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    #: Share of the reference's embedding variance each direction holds.
    explained_variance_ratio: np.ndarray  # (k,)

    @property
    def dimensions(self) -> int:
        return int(self.mean.shape[0])

    @property
    def names(self) -> list[str]:
        return signal_names(int(self.components.shape[0]))

    @classmethod
    def fit(cls, embeddings: np.ndarray, components: int) -> EmbeddingProjection | None:
        """Fitted on (N, D) embeddings; None when there is too little to fit (N < 2)."""
        data = np.asarray(embeddings, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] < 2 or data.shape[1] < 1 or components < 1:
            return None
        mean = data.mean(axis=0)
        centred = data - mean
        # The D x D covariance rather than an SVD of the N x D data: N may be 50,000 images.
        covariance = centred.T @ centred / (data.shape[0] - 1)
        variances, vectors = np.linalg.eigh(covariance)
        order = np.argsort(variances)[::-1]
        keep = order[: min(components, data.shape[1], data.shape[0] - 1)]
        directions = vectors[:, keep].T
        # A direction's sign is arbitrary; fix it so that rebuilding gives the same signals.
        signs = np.sign(directions[np.arange(directions.shape[0]), np.abs(directions).argmax(axis=1)])
        directions *= np.where(signs == 0, 1.0, signs)[:, None]
        total = float(np.clip(variances, 0, None).sum())
        ratio = np.clip(variances[keep], 0, None) / total if total > 0 else np.zeros(len(keep))
        return cls(mean.astype(np.float32), directions.astype(np.float32), ratio)

    def project(self, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """Each direction's coordinate per row of (N, D) ``embeddings``, as float64 signals."""
        data = np.asarray(embeddings, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != self.dimensions:
            raise ValueError(f"embeddings of shape {data.shape}; this projection takes (N, {self.dimensions})")
        coordinates = (data - self.mean) @ self.components.T
        return {name: coordinates[:, index].astype(np.float64) for index, name in enumerate(self.names)}
