"""``TorchvisionModel``: a loaded network behind monitord's ``Model`` protocol.

``DeviceDecodingModel`` adds the core's optional ``EncodedInputModel`` protocol
(``model.decode_on_device``): JPEGs reach it still encoded and are decoded in batches
on the model's device.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from monitord.model import BatchResult
from PIL import Image
from torch import nn

from .acceleration import Acceleration, HostStaging
from .activations import ActivationProbe, FeatureSource
from .device_decode import DevicePreprocessor, EncodedJpeg, read_encoded_jpeg
from .errors import ModelLoadError
from .fingerprint import model_fingerprint, state_digest
from .preprocess import PreprocessSpec, preprocess_image
from .signals import SIGNAL_NAMES, output_signals


class TorchvisionModel:
    """A classifier ready to serve: preprocessing, batched inference and signals.

    Construction runs one small forward pass, so that a network that cannot take the
    configured input, or whose output does not match the class list, fails at start-up
    with a message instead of on the first real image. ``acceleration`` (memory
    format, autocast, pinned host memory) applies to that pass too.

    The activation signals and the embedding come from ``features``; by default an
    ``ActivationProbe`` on ``activation_layer``. ``fingerprint`` identifies the weights
    (``weights_digest``, the sha256 of their file; without one, of the network's
    tensors), ``kind`` (the architecture or program format; default ``name``), the
    preprocessing and what the embedding measures.
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
        acceleration: Acceleration | None = None,
        features: FeatureSource | None = None,
        weights_digest: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.name = name
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.spec = spec
        self.device = str(device)
        self.reference_signals: dict[str, list[float]] = {
            key: [float(v) for v in values] for key, values in (reference_signals or {}).items()
        }
        self._torch_device = device
        self.acceleration = acceleration or Acceleration()
        self._network = network.to(device).eval().requires_grad_(False)
        if self.acceleration.channels_last:
            self._network = self._network.to(memory_format=torch.channels_last)
        self._staging = HostStaging(self.acceleration.pin_memory)
        self._features = features or ActivationProbe(self._network, activation_layer)
        #: Width D of ``BatchResult.embedding`` (N, D); known once the check pass ran.
        self.embedding_size = 0
        self._lock = threading.Lock()
        self._closed = False
        self._check_runs()
        #: What the activation signals and the embedding measure, e.g. ``input of classifier.fc2``.
        self.activation_layer = self._features.description
        #: sha256 hex digest naming this model for saved references (``model_fingerprint``).
        self.fingerprint = model_fingerprint(
            weights_digest=weights_digest or state_digest(network),
            kind=kind or name,
            spec=spec,
            features=self.activation_layer,
        )

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
            return self._empty_result()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"model {self.name} is closed")
            return self._classify(self._to_device(self._host_batch([array])))

    def _host_batch(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        """The arrays concatenated along the batch axis as one float32 host tensor: in the
        pinned staging buffer when copies go to a GPU, else without copying if possible."""
        if not self.acceleration.pin_memory:
            joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            return torch.from_numpy(np.ascontiguousarray(joined, dtype=np.float32))
        count = sum(array.shape[0] for array in arrays)
        staged = self._staging.take((count, *arrays[0].shape[1:]))
        np.concatenate(arrays, out=staged.numpy(), casting="same_kind")
        return staged

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """``host`` on the model's device (asynchronously from pinned memory on CUDA)."""
        on_device = host.to(self._torch_device, non_blocking=self.acceleration.pin_memory)
        self._staging.copied(self._torch_device)
        return on_device

    def _forward(self, inputs: torch.Tensor) -> Any:
        """The network's raw output for a batch already on the device; a hooking feature
        source holds the watched layer's reading afterwards.

        The network runs under the configured autocast, on inputs in its memory format.
        """
        inputs = inputs.contiguous(memory_format=self.acceleration.memory_format)
        self._features.reset()
        with torch.inference_mode(), self.acceleration.autocast_context(self._torch_device):
            return self._network(inputs)

    def _classify(self, inputs: torch.Tensor) -> BatchResult:
        """Every signal for a batch on the device; call with the lock held.

        Logits are brought back to float32 before the softmax (and the activation
        statistics are taken in float64), so with autocast the signals carry only the
        rounding the network itself did in bfloat16/float16.
        """
        count = inputs.shape[0]
        output = self._forward(inputs)
        logits = self._features.logits(output)
        reading = self._features.read(output, count)
        if logits.shape != (count, len(self.class_names)):
            raise RuntimeError(f"{self.name} returned logits of shape {tuple(logits.shape)}")
        class_index, signals = output_signals(logits.float())
        signals["activation_mean"] = reading.mean
        signals["activation_std"] = reading.std
        return BatchResult(
            class_index=class_index,
            confidence=signals["confidence"],
            signals=signals,
            embedding=reading.embedding,
        )

    def _empty_result(self) -> BatchResult:
        empty = np.empty(0, dtype=np.float64)
        return BatchResult(
            class_index=np.empty(0, dtype=np.int64),
            confidence=empty,
            signals={name: empty.copy() for name in SIGNAL_NAMES},
            embedding=np.empty((0, self.embedding_size), dtype=np.float32),
        )

    def close(self) -> None:
        """Drop the hooks and the network; safe to call twice, waits for a running batch."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._features.remove()
            self._network = nn.Identity()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def _check_runs(self) -> None:
        # Two images, so a watched layer whose first dimension is not the batch shows.
        inputs = torch.zeros((2, *self.spec.shape), device=self._torch_device)
        channels, (height, width) = self.spec.channels, self.spec.input_size
        try:
            output = self._forward(inputs)
        except Exception as error:  # noqa: BLE001 - programs raise AssertionError on a guard
            self.close()
            hint = " and model.autocast" if self.acceleration.autocast is not None else ""
            raise ModelLoadError(
                f"{self.name} cannot run on {channels}-channel {height}x{width} input "
                f"({str(error).strip()}); check model.input_size and model.channels{hint}"
            ) from None
        try:
            logits = self._features.logits(output)
        except ValueError as error:
            self.close()
            raise ModelLoadError(f"{self.name}: {error}") from None
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        if shape != (2, len(self.class_names)):
            self.close()
            raise ModelLoadError(
                f"{self.name} returns output of shape {shape} for 2 images, but "
                f"{len(self.class_names)} class names are configured; the network must "
                "return one logit per class"
            )
        try:
            self.embedding_size = int(self._features.read(output, 2).embedding.shape[1])
        except RuntimeError as error:
            self.close()
            raise ModelLoadError(self._features.failure_message(str(error))) from None

    def __repr__(self) -> str:
        return (
            f"TorchvisionModel(name={self.name!r}, classes={len(self.class_names)}, "
            f"device={self.device!r}, input={self.spec.shape})"
        )


class DeviceDecodingModel(TorchvisionModel):
    """A ``TorchvisionModel`` that takes JPEGs still encoded (``model.decode_on_device``).

    It meets the core's ``EncodedInputModel`` protocol: the decode threads only check
    each JPEG's header and markers (``prepare_encoded``), and each micro-batch of JPEGs
    is decoded, resized and normalised on the model's device in one go
    (``predict_inputs``). Other formats, and JPEGs that decoder would not take, come as
    arrays from ``preprocess`` as before; a batch may mix both.
    """

    def __init__(self, network: nn.Module, **kwargs: Any) -> None:
        super().__init__(network, **kwargs)
        self.device_preprocessor = DevicePreprocessor(self.spec, self._torch_device)

    def prepare_encoded(self, data: bytes, max_pixels: int) -> EncodedJpeg | None:
        """A checked JPEG for ``predict_inputs``, or None to have the core decode ``data``.

        Thread-safe and cheap (no pixel is decoded). Raises ``ValueError`` for a JPEG
        whose header declares more than ``max_pixels`` pixels.
        """
        return read_encoded_jpeg(data, max_pixels)

    def predict_inputs(self, inputs: list[Any]) -> BatchResult:
        """Classify ``preprocess`` arrays and ``prepare_encoded`` JPEGs, in their order."""
        if self._closed:
            raise RuntimeError(f"model {self.name} is closed")
        if not inputs:
            return self._empty_result()
        array_rows = [row for row, item in enumerate(inputs) if isinstance(item, np.ndarray)]
        jpeg_rows = [row for row, item in enumerate(inputs) if isinstance(item, EncodedJpeg)]
        if len(array_rows) + len(jpeg_rows) != len(inputs):
            strange = next(item for item in inputs if not isinstance(item, (np.ndarray, EncodedJpeg)))
            raise TypeError(f"predict_inputs got a {type(strange).__name__}; expected arrays or EncodedJpeg")
        expected = self.spec.shape
        for row in array_rows:
            if tuple(inputs[row].shape) != expected:
                raise ValueError(f"input {row} has shape {inputs[row].shape}, expected {expected}")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"model {self.name} is closed")
            decoded, rejected = None, {}
            if jpeg_rows:
                decoded, refused = self.device_preprocessor.inputs([inputs[row] for row in jpeg_rows])
                rejected = {jpeg_rows[index]: reason for index, reason in refused.items()}
                jpeg_rows = [row for row in jpeg_rows if row not in rejected]
            result = self._classify_rows(inputs, array_rows, jpeg_rows, decoded)
        return replace(result, rejected=rejected) if rejected else result

    def _classify_rows(self, inputs: list[Any], array_rows: list[int], jpeg_rows: list[int],
                       decoded: torch.Tensor | None) -> BatchResult:
        """Classify the host arrays at ``array_rows`` and the decoded JPEGs at ``jpeg_rows``
        together, in row order; call with the lock held."""
        if not array_rows:
            return self._classify(decoded) if jpeg_rows else self._empty_result()
        arrays = [inputs[row][None] for row in array_rows]
        from_host = self._to_device(self._host_batch(arrays))
        if not jpeg_rows:
            return self._classify(from_host)
        kept = sorted(array_rows + jpeg_rows)
        position = {row: index for index, row in enumerate(kept)}
        batch = torch.empty((len(kept), *self.spec.shape), dtype=torch.float32, device=self._torch_device)
        batch[torch.tensor([position[row] for row in array_rows], device=self._torch_device)] = from_host
        batch[torch.tensor([position[row] for row in jpeg_rows], device=self._torch_device)] = decoded
        return self._classify(batch)

