"""The pipeline: bounded queues from sources to outcomes.

```
submit ─► ingest queue ─► decode workers (threads) ─► ready queue ─► micro-batcher
       ─► batch queue ─► model (its own thread) ─► signals ─► detectors, metrics, log
       ─► each item's future resolves with a Prediction or a Rejection
```

Every queue is bounded, so a source feels back-pressure: ``submit`` waits for room,
``submit_nowait`` refuses with ``PipelineFull`` (HTTP turns that into 503). The model
runs one batch while the batcher fills the next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from monitord.batcher import collect_batch
from monitord.decode import DecodeError, decode_image, read_payload
from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.items import Outcome, Prediction, Rejection, WorkItem
from monitord.metrics import Metrics
from monitord.model import BatchResult, Model
from monitord.predictions_log import PredictionsLog
from monitord.settings import PipelineSettings

log = logging.getLogger("monitord.pipeline")


class PipelineFull(Exception):
    """No room for the items right now; try again shortly."""


class PipelineClosed(Exception):
    """The pipeline is not running (starting up or shutting down)."""


@dataclass(eq=False)
class _Pending:
    item: WorkItem
    future: asyncio.Future[Outcome]


@dataclass
class _Prepared:
    pending: _Pending
    array: np.ndarray


class Pipeline:
    """Runs submitted images through decode, micro-batching, the model and the detectors."""

    def __init__(
        self,
        settings: PipelineSettings,
        metrics: Metrics,
        predictions_log: PredictionsLog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.predictions_log = predictions_log
        self.model: Model | None = None
        self.detectors: DetectorStage | None = None
        self.feedback: Feedback | None = None
        self._ingest: asyncio.Queue[_Pending] = asyncio.Queue(settings.queue_size)
        # Room for two batches: the batcher never starves while the decoders run ahead.
        self._ready: asyncio.Queue[_Prepared | None] = asyncio.Queue(2 * settings.max_batch_size)
        self._batches: asyncio.Queue[list[_Prepared]] = asyncio.Queue(1)
        self._forming: list[_Prepared] = []
        self._at_model = 0
        self._pending: set[_Pending] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._flushing = False
        self._accepting = False
        self._tasks: list[asyncio.Task[None]] = []
        self._decode_pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="monitord-decode")
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="monitord-model")
        metrics.watch_queue("ingest", self._ingest.qsize)
        metrics.watch_queue("batching", lambda: self._ready.qsize() + len(self._forming))
        metrics.watch_queue("inference", lambda: self._at_model)

    # -- intake ------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    def free_slots(self) -> int:
        return self._ingest.maxsize - self._ingest.qsize()

    async def submit(self, item: WorkItem) -> Outcome:
        """Submit one item, waiting for room; return its outcome."""
        if not self._accepting:
            raise PipelineClosed("the pipeline is not accepting work")
        pending = self._track(item)
        try:
            await self._ingest.put(pending)
        except asyncio.CancelledError:
            self._untrack(pending)
            raise
        return await pending.future

    def submit_nowait(self, items: Sequence[WorkItem]) -> list[asyncio.Future[Outcome]]:
        """Submit all of ``items`` at once or none of them (``PipelineFull``)."""
        if not self._accepting:
            raise PipelineClosed("the pipeline is not accepting work")
        if len(items) > self.free_slots():
            raise PipelineFull(f"{len(items)} item(s) offered, room for {self.free_slots()}")
        futures = []
        for item in items:
            pending = self._track(item)
            self._ingest.put_nowait(pending)
            futures.append(pending.future)
        return futures

    def _track(self, item: WorkItem) -> _Pending:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future)
        self._pending.add(pending)
        self._idle.clear()
        return pending

    def _untrack(self, pending: _Pending) -> None:
        self._pending.discard(pending)
        if not self._pending:
            self._idle.set()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, model: Model, detectors: DetectorStage, feedback: Feedback | None = None) -> None:
        self.model = model
        self.detectors = detectors
        self.feedback = feedback
        self.metrics.declare_classes(model.class_names)
        self._tasks = [
            asyncio.create_task(self._decode_worker(), name=f"decode-{i}")
            for i in range(self.settings.decode_workers)
        ]
        self._tasks.append(asyncio.create_task(self._batch_worker(), name="batcher"))
        self._tasks.append(asyncio.create_task(self._model_worker(), name="model"))
        self._accepting = True

    def flush_early(self) -> None:
        """Stop waiting for batches to fill: shutdown is coming, send partial batches now."""
        self._flushing = True
        if not self._ready.full():
            self._ready.put_nowait(None)

    async def drain(self) -> None:
        """Wait until every submitted item has its outcome."""
        self.flush_early()
        await self._idle.wait()

    async def close(self) -> None:
        """Refuse new work, cancel the workers and release the threads.

        Items still pending get no outcome: their futures are cancelled, so a source keeps
        them (a file stays in the inbox for the next start).
        """
        self._accepting = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pending in list(self._pending):
            pending.future.cancel()
            self._untrack(pending)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._model_pool.shutdown(wait=True)
        if self.model is not None:
            self.model.close()

    # -- stages --------------------------------------------------------------------------

    async def _decode_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = await self._ingest.get()
            try:
                array = await loop.run_in_executor(self._decode_pool, self._prepare, pending.item)
            except (DecodeError, ValueError) as error:
                self._resolve(pending, Rejection(pending.item.id, pending.item.source, str(error)))
                continue
            except Exception as error:  # a bug in a plugin's preprocess must not stop the stage
                log.exception("preprocessing %s failed unexpectedly", pending.item.id)
                reason = f"internal error while preprocessing: {type(error).__name__}: {error}"
                self._resolve(pending, Rejection(pending.item.id, pending.item.source, reason, "error"))
                continue
            await self._ready.put(_Prepared(pending, array))

    def _prepare(self, item: WorkItem) -> np.ndarray:
        assert self.model is not None
        image = decode_image(read_payload(item.payload), self.settings.max_image_pixels)
        return self.model.preprocess(image)

    async def _batch_worker(self) -> None:
        while True:
            self._forming = []
            batch = await collect_batch(
                self._ready,
                self.settings.max_batch_size,
                0.0 if self._flushing else self.settings.max_batch_delay,
                into=self._forming,
            )
            if batch:
                self._forming = []
                self._at_model += len(batch)
                await self._batches.put(batch)

    async def _model_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._batches.get()
            try:
                started = time.perf_counter()
                result = await loop.run_in_executor(self._model_pool, self._infer, [p.array for p in batch])
                self.metrics.inference_duration.observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(len(batch))
            except Exception as error:
                log.exception("the model failed on a batch of %d", len(batch))
                reason = f"model failed: {type(error).__name__}: {error}"
                for prepared in batch:
                    item = prepared.pending.item
                    self._resolve(prepared.pending, Rejection(item.id, item.source, reason, "error"))
            else:
                self._finish_batch(batch, result)
            finally:
                self._at_model -= len(batch)

    def _infer(self, arrays: list[np.ndarray]) -> BatchResult:
        assert self.model is not None
        result = self.model.predict(np.stack(arrays))
        if len(result) != len(arrays):
            raise RuntimeError(f"model returned {len(result)} results for {len(arrays)} images")
        return result

    def _finish_batch(self, batch: list[_Prepared], result: BatchResult) -> None:
        assert self.model is not None and self.detectors is not None
        self.detectors.update(result.signals)
        names = self.model.class_names
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        class_index = result.class_index.tolist()
        confidence = result.confidence.tolist()
        columns = {name: values.tolist() for name, values in result.signals.items()}
        predictions = []
        for row, prepared in enumerate(batch):
            item = prepared.pending.item
            predictions.append(
                Prediction(
                    id=item.id,
                    source=item.source,
                    class_name=names[class_index[row]],
                    class_index=class_index[row],
                    confidence=confidence[row],
                    signals={name: values[row] for name, values in columns.items()},
                    time=now,
                    label=item.label,
                )
            )
        # Known for feedback before any client sees its prediction and can send a label.
        if self.feedback is not None:
            self.feedback.observe(predictions)
        for prediction, prepared in zip(predictions, batch):
            self.metrics.predictions.labels(prediction.class_name).inc()
            self.metrics.confidence.observe(prediction.confidence)
            self._resolve(prepared.pending, prediction)
        if self.predictions_log is not None:
            self.predictions_log.write(predictions)

    def _resolve(self, pending: _Pending, outcome: Outcome) -> None:
        item = pending.item
        outcome_label = "ok" if isinstance(outcome, Prediction) else outcome.outcome
        self.metrics.images.labels(source=item.source, outcome=outcome_label).inc()
        self.metrics.end_to_end.observe(time.monotonic() - item.received)
        if not pending.future.done():
            pending.future.set_result(outcome)
        self._untrack(pending)
