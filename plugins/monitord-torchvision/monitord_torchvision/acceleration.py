"""How the forward pass runs on its device: memory layout, mixed precision, host memory.

On a GPU the defaults of eager PyTorch leave most of the speed unused: convolutions in
float32 on NCHW tensors miss the tensor cores (which want bfloat16/float16 and NHWC,
``torch.channels_last``), and copies from pageable host memory cannot overlap with
work. ``Acceleration`` gathers those choices, resolved once for the model's device from
the ``model.channels_last`` and ``model.autocast`` settings.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from .errors import ModelLoadError

#: ``model.autocast`` values and the dtype each runs the forward pass in.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "off": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class Acceleration:
    """Resolved settings for one device; the defaults are the plain float32 CPU path."""

    #: Network weights and inputs in ``torch.channels_last`` (NHWC) memory format.
    channels_last: bool = False
    #: dtype of ``torch.autocast`` around the forward pass; None runs it in float32.
    autocast: torch.dtype | None = None
    #: Stage host → device copies in pinned memory and copy with ``non_blocking``.
    pin_memory: bool = False

    @classmethod
    def for_device(
        cls, device: torch.device, *, channels_last: bool | None = None, autocast: str = "off"
    ) -> Acceleration:
        """The settings for ``device``; ``channels_last=None`` means on for CUDA only.

        A GPU without bfloat16 support (before Ampere) refuses ``autocast = "bf16"``
        here, at start-up, rather than failing or crawling on the first batch.
        """
        if autocast not in AUTOCAST_DTYPES:
            raise ModelLoadError(
                f"model.autocast = {autocast!r}: use one of {', '.join(map(repr, AUTOCAST_DTYPES))}"
            )
        cuda = device.type == "cuda"
        dtype = AUTOCAST_DTYPES[autocast]
        if cuda and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ModelLoadError(
                f"model.autocast = 'bf16': {torch.cuda.get_device_name(device)} has no "
                "bfloat16 support; use 'fp16' (or 'off')"
            )
        return cls(
            channels_last=cuda if channels_last is None else channels_last,
            autocast=dtype,
            pin_memory=cuda,
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast_context(self, device: torch.device) -> ContextManager[object]:
        """``torch.autocast`` for the forward pass, or a context that does nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    def describe(self) -> str:
        """A short summary for the start-up log."""
        precision = {None: "float32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
        parts = [precision[self.autocast], "channels_last" if self.channels_last else "NCHW"]
        if self.pin_memory:
            parts.append("pinned host memory")
        return ", ".join(parts)


class HostStaging:
    """A reusable (pinned, where that helps) host buffer that input batches are stacked into.

    Pinned memory is what lets a host → GPU copy run asynchronously; allocating it is
    slow, so one buffer is kept and grown as needed. Before the buffer is handed out
    again, ``take`` waits for the copy that last read it (``copied``), so a batch is never
    overwritten while the GPU still reads it. Only the model's thread uses it.
    """

    def __init__(self, pin_memory: bool) -> None:
        self._pin = pin_memory
        self._buffer: torch.Tensor | None = None
        self._last_copy: torch.cuda.Event | None = None

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 host tensor of ``shape`` (its content is whatever was there)."""
        if self._last_copy is not None:
            self._last_copy.synchronize()
            self._last_copy = None
        count = 1
        for size in shape:
            count *= size
        if self._buffer is None or self._buffer.numel() < count:
            self._buffer = torch.empty(count, dtype=torch.float32, pin_memory=self._pin)
        return self._buffer[:count].view(shape)

    def copied(self, device: torch.device) -> None:
        """Note that a copy from the buffer to ``device`` was just queued."""
        if self._pin and device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._last_copy = event
