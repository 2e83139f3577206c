"""A third-party plugin as the tests install it: a source, a model and a detector.

``brightness`` is a model small enough to need no framework: class ``bright`` when the
mean pixel is above one half, ``dark`` otherwise. ``ticker`` is a source that submits
``count`` generated images (``source_options.ticker.count``), so a test can see a plugin
source's work counted in the daemon's metrics. ``over`` is a detector with a rule a test
can predict exactly: drift while the mean of the last ``window`` values is above
``limit``, warning above ``warn``; it implements the core protocol without the
monitord-drift package, as any third-party detector would.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image

from monitord.detectors import DetectorState, DriftEvent
from monitord.hookspecs import hookimpl
from monitord.items import WorkItem
from monitord.model import BatchResult
from monitord.sources import Source


class BrightnessModel:
    name = "brightness"
    class_names = ("dark", "bright")
    device = "cpu"
    reference_signals = {"confidence": [0.9, 0.8, 0.95, 0.85]}

    def __init__(self, fail_on: float | None = None) -> None:
        self.fail_on = fail_on
        self.batches: list[int] = []

    def preprocess(self, image: Image.Image) -> np.ndarray:
        gray = np.asarray(image.convert("L").resize((4, 4)), dtype=np.float32) / 255.0
        return gray[None, :, :]

    def predict(self, batch: np.ndarray) -> BatchResult:
        self.batches.append(len(batch))
        brightness = batch.reshape(len(batch), -1).mean(axis=1).astype(np.float64)
        if self.fail_on is not None and np.any(np.isclose(brightness, self.fail_on, atol=0.01)):
            raise RuntimeError("poisoned batch")
        bright = brightness > 0.5
        confidence = np.where(bright, brightness, 1.0 - brightness)
        return BatchResult(
            class_index=bright.astype(np.int64),
            confidence=confidence,
            signals={"confidence": confidence, "brightness": brightness},
        )

    def close(self) -> None:
        pass


def png(level: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), color=level).save(buffer, format="PNG")
    return buffer.getvalue()


class TickerSource(Source):
    def __init__(self, context) -> None:
        super().__init__(context)
        self.count = int(context.options.get("count", 3))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        for i in range(self.count):
            await self.context.pipeline.submit(WorkItem(id=f"tick-{i}", source=self.name, payload=png(250)))

    async def stop(self) -> None:
        if self._task is not None:
            await self._task


@hookimpl
def register_sources(register) -> None:
    register("ticker", TickerSource)


@hookimpl
def register_models(register) -> None:
    register("brightness", lambda settings, state_dir: BrightnessModel())


class OverDetector:
    def __init__(self, limit: float = 0.5, warn: float | None = None, window: int = 1, reference=None) -> None:
        self.limit, self.warn, self.window = float(limit), warn, int(window)
        self.reference_size = None if reference is None else len(reference)
        self.recent: list[float] = []
        self.samples = 0
        self.level = "ok"

    def _level(self) -> str:
        mean = sum(self.recent) / len(self.recent)
        if mean > self.limit:
            return "drift"
        return "warning" if self.warn is not None and mean > self.warn else "ok"

    def update(self, values: np.ndarray) -> list[DriftEvent]:
        events = []
        order = {"ok": 0, "warning": 1, "drift": 2}
        for index, value in enumerate(np.asarray(values, dtype=float).reshape(len(values), -1)[:, 0]):
            self.recent = (self.recent + [float(value)])[-self.window:]
            self.samples += 1
            level = self._level()
            if order[level] > order[self.level]:
                events.append(DriftEvent(index, level, self.statistic, self.limit if level == "drift" else self.warn))
            self.level = level
        return events

    @property
    def statistic(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    @property
    def state(self) -> DetectorState:
        return DetectorState(self.statistic, self.limit, None, self.level, self.samples, self.warn, self.reference_size)

    def snapshot(self) -> dict:
        return {"recent": self.recent, "samples": self.samples, "level": self.level}

    def restore(self, snapshot) -> None:
        self.recent, self.samples, self.level = list(snapshot["recent"]), snapshot["samples"], snapshot["level"]


@hookimpl
def register_detectors(register) -> None:
    register("over", lambda spec, reference: OverDetector(**spec.params(), reference=reference))
