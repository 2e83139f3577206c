"""``TorchvisionModel``: a loaded network behind monitord's ``Model`` protocol."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monitord.model import BatchResult
from PIL import Image
from torch import nn

from .activations import ActivationProbe
from .errors import ModelLoadError
from .preprocess import PreprocessSpec, preprocess_image
from .signals import SIGNAL_NAMES, output_signals


class TorchvisionModel:
    """A classifier ready to serve: preprocessing, batched inference and signals.

    Construction runs one small forward pass, so that a network that cannot take the
    configured input, or whose output does not match the class list, fails at start-up
    with a message instead of on the first real image.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        name: str,
        class_names: Sequence[str],
        spec: PreprocessSpec,
        device: torch.device,
        activation_layer: str | None = None,
        reference_signals: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.name = name
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.spec = spec
        self.device = str(device)
        self.reference_signals: dict[str, list[float]] = {
            key: [float(v) for v in values] for key, values in (reference_signals or {}).items()
        }
        self._torch_device = device
        self._network = network.to(device).eval().requires_grad_(False)
        self._probe = ActivationProbe(self._network, activation_layer)
        #: What the activation signals measure, e.g. ``input of classifier.fc2``.
        self.activation_layer = self._probe.description
        self._lock = threading.Lock()
        self._closed = False
        self._check_runs()

    @property
    def network(self) -> nn.Module:
        """The underlying torch module (in eval mode), for inspection."""
        return self._network

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """(C, H, W) float32; thread-safe; ``ValueError`` saying why for unusable images."""
        return preprocess_image(image, self.spec)

    def predict(self, batch: np.ndarray) -> BatchResult:
        """Classify a stacked batch (N, C, H, W) and derive every signal per image."""
        array = np.asarray(batch)
        expected = self.spec.shape
        if array.ndim != 4 or tuple(array.shape[1:]) != expected:
            raise ValueError(
                f"expected a batch of shape (N, {', '.join(map(str, expected))}), got {array.shape}"
            )
        if self._closed:
            raise RuntimeError(f"model {self.name} is closed")
        if array.shape[0] == 0:
            empty = np.empty(0, dtype=np.float64)
            return BatchResult(
                class_index=np.empty(0, dtype=np.int64),
                confidence=empty,
                signals={name: empty.copy() for name in SIGNAL_NAMES},
            )
        inputs = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        with self._lock, torch.inference_mode():
            if self._closed:
                raise RuntimeError(f"model {self.name} is closed")
            self._probe.reset()
            logits = self._network(inputs.to(self._torch_device))
            activation_mean, activation_std = self._probe.take(array.shape[0])
        if logits.shape != (array.shape[0], len(self.class_names)):
            raise RuntimeError(f"{self.name} returned logits of shape {tuple(logits.shape)}")
        class_index, signals = output_signals(logits)
        signals["activation_mean"] = activation_mean
        signals["activation_std"] = activation_std
        return BatchResult(
            class_index=class_index, confidence=signals["confidence"], signals=signals
        )

    def close(self) -> None:
        """Drop the hooks and the network; safe to call twice, waits for a running batch."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._probe.remove()
            self._network = nn.Identity()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def _check_runs(self) -> None:
        # Two images, so a watched layer whose first dimension is not the batch shows.
        inputs = torch.zeros((2, *self.spec.shape), device=self._torch_device)
        channels, (height, width) = self.spec.channels, self.spec.input_size
        try:
            with torch.inference_mode():
                self._probe.reset()
                logits = self._network(inputs)
        except RuntimeError as error:
            self.close()
            raise ModelLoadError(
                f"{self.name} cannot run on {channels}-channel {height}x{width} input "
                f"({error}); check model.input_size and model.channels"
            ) from None
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        if shape != (2, len(self.class_names)):
            self.close()
            raise ModelLoadError(
                f"{self.name} returns output of shape {shape} for 2 images, but "
                f"{len(self.class_names)} class names are configured; the network must "
                "return one logit per class"
            )
        try:
            self._probe.take(2)
        except RuntimeError as error:
            self.close()
            raise ModelLoadError(
                f"model.activation_layer: {error}; pick a layer that runs on every forward "
                "pass and returns a (batch, ...) tensor"
            ) from None

    def __repr__(self) -> str:
        return (
            f"TorchvisionModel(name={self.name!r}, classes={len(self.class_names)}, "
            f"device={self.device!r}, input={self.spec.shape})"
        )
