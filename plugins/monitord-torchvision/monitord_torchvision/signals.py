"""Per-image signals derived from one forward pass, as columnar float64 arrays.

Detectors watch these by name, so the names and their meaning are part of the plugin's
public contract: ``confidence``, ``entropy`` (nats), ``margin``, ``predicted_class``,
``activation_mean`` and ``activation_std``.
"""

from __future__ import annotations

import numpy as np
import torch

from .plugin import SIGNALS as SIGNAL_NAMES  # declared there, where torch is not imported


def activation_statistics(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) standard deviation over every non-batch dimension.

    Computed in float64 as soon as the layer runs, so a later in-place operation
    (``ReLU(inplace=True)``) cannot change what was measured.
    """
    flat = activations.detach().reshape(activations.shape[0], -1).to(torch.float64)
    return flat.mean(dim=1), flat.std(dim=1, correction=0)


def pooled_features(activations: torch.Tensor) -> torch.Tensor:
    """One float32 vector per image: (N, C, ...) averaged over the dimensions after C.

    A fresh tensor, like ``activation_statistics``'s, so later in-place operations cannot
    change it; (N,) becomes (N, 1).
    """
    features = activations.detach()
    if features.ndim == 1:
        features = features[:, None]
    if features.ndim > 2:
        return features.to(torch.float32).mean(dim=tuple(range(2, features.ndim)))
    return features.to(torch.float32, copy=True)


def output_signals(logits: torch.Tensor) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(class_index int64, signals)`` from a batch of logits (N, classes).

    ``margin`` is top-1 minus top-2 probability (1.0 for a single-class model).
    """
    probabilities = torch.softmax(logits.detach().to(torch.float64), dim=1)
    top = torch.topk(probabilities, k=min(2, probabilities.shape[1]), dim=1)
    confidence = top.values[:, 0]
    if top.values.shape[1] > 1:
        margin = top.values[:, 0] - top.values[:, 1]
    else:
        margin = torch.ones_like(confidence)
    entropy = torch.special.entr(probabilities).sum(dim=1).clamp_min(0.0)
    class_index = top.indices[:, 0]
    signals = {
        "confidence": confidence.cpu().numpy(),
        "entropy": entropy.cpu().numpy(),
        "margin": margin.cpu().numpy(),
        "predicted_class": class_index.to(torch.float64).cpu().numpy(),
    }
    return class_index.cpu().numpy().astype(np.int64), signals
