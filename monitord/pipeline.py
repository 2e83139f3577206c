"""The pipeline: bounded queues from sources to outcomes.

```
submit ─► ingest queue ─► decode workers (threads) ─► ready queue ─► micro-batcher
       ─► batch queue ─► model (its own thread) ─► signals ─► detectors, metrics, log
       ─► each item's future resolves with a Prediction or a Rejection
```

Every queue is bounded, so a source feels back-pressure: ``submit`` waits for room,
``submit_nowait`` refuses with ``PipelineFull`` (HTTP turns that into 503). The model
runs one batch while the batcher fills the next.

A source that already holds its items in a bounded group of its own, in a thread of
its own (the folder source: files claimed from the inbox), can instead run them a batch
at a time with ``run_batch``: decoded in that thread, predicted by the model thread,
recorded by the observers on the event loop, with no queue and no future per item. An
item handed from thread to thread costs the folder more than decoding it: every system
call lets go of the interpreter lock, and threads taking it back from one another made
up most of a file's cost.

Room is counted twice: in items (``pipeline.queue_size``) and in the encoded bytes of
items accepted but not yet decoded (``pipeline.max_queued_bytes``), so a queue of large
images cannot take more memory than the operator allowed. Only ``bytes`` payloads count;
a folder item carries a path, which the decode threads read. An item's bytes are released
once it is decoded (or resolved, or cancelled).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from monitord.batcher import collect_batch
from monitord.decode import DecodeError, decode_image, read_payload
from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.items import Outcome, Prediction, Rejection, WorkItem
from monitord.metrics import Metrics
from monitord.model import BatchResult, EncodedInputModel, Model
from monitord.observers import BatchObserver, LocalObservers
from monitord.predictions_log import PredictionsLog
from monitord.settings import PipelineSettings

log = logging.getLogger("monitord.pipeline")


class PipelineFull(Exception):
    """No room for the items right now; try again shortly."""


class PipelineTooLarge(PipelineFull):
    """The items could never fit: more of them, or more bytes, than the pipeline ever holds.

    A subclass of ``PipelineFull`` so that callers that only know that one still refuse;
    retrying does not help, so HTTP answers 413 instead of 503.
    """


class PipelineClosed(Exception):
    """The pipeline is not running (starting up or shutting down)."""


class NotRecorded(PipelineClosed):
    """An item's batch could not be handed to the process that holds the detectors (a
    worker whose main process is gone). The item has no outcome, through no fault of its
    own: its future fails with this, and the source keeps it for later, as at a shutdown
    (a folder file stays in the inbox; an HTTP client is told to retry)."""


class _ObserverFailed(Exception):
    """An observer raised while recording a batch (a bug, not a lost main process)."""


@dataclass(eq=False)
class _Pending:
    item: WorkItem
    future: asyncio.Future[Outcome]
    #: Encoded bytes this item holds of ``pipeline.max_queued_bytes`` (0 once released).
    held_bytes: int = 0


def payload_bytes(item: WorkItem) -> int:
    """Bytes ``item`` counts against ``pipeline.max_queued_bytes``: 0 for a path."""
    payload = item.payload
    return len(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else 0


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
        self._takes_encoded = False
        self._image_counters: dict[tuple[str, str], Any] = {}
        self.observer: BatchObserver | None = None
        self._ingest: asyncio.Queue[_Pending] = asyncio.Queue(settings.queue_size)
        # Room for two batches: the batcher never starves while the decoders run ahead.
        self._ready: asyncio.Queue[_Prepared | None] = asyncio.Queue(2 * settings.max_batch_size)
        self._batches: asyncio.Queue[list[_Prepared]] = asyncio.Queue(1)
        self._forming: list[_Prepared] = []
        self._at_model = 0
        #: Items in the decode threads now: they reach the batcher within a millisecond or so.
        self._decoding = 0
        #: Set while no batch is at or waiting for the model and no item is being decoded:
        #: the batcher then sends what is ready instead of waiting for the batch to fill.
        #: Waiting for a group still in a decode thread costs far less than sending it as
        #: a batch of its own (a batch of 8 costs the digits model twice as much per image
        #: as one of 64), and a lone image still goes straight through.
        self._nothing_coming = asyncio.Event()
        self._nothing_coming.set()
        self._pending: set[_Pending] = set()
        self._queued_bytes = 0
        # Futures of ``submit`` calls waiting for bytes to be released.
        self._byte_waiters: list[asyncio.Future[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._flushing = False
        self._accepting = False
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        #: ``run_batch`` calls waiting for their batch to be recorded; ``close`` cancels them.
        self._recording: set[concurrent.futures.Future[None]] = set()
        self._recording_lock = threading.Lock()
        # Most items one decode worker takes from the ingest queue per trip to its thread.
        self._decode_group = max(1, settings.max_batch_size // settings.decode_workers)
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

    @property
    def queued_bytes(self) -> int:
        """Encoded bytes of accepted items not yet decoded."""
        return self._queued_bytes

    def free_bytes(self) -> int:
        """Bytes that can still be accepted under ``pipeline.max_queued_bytes``."""
        return max(0, self.settings.max_queued_bytes - self._queued_bytes)

    def _check_size(self, count: int, size: int) -> None:
        if count > self.settings.queue_size:
            raise PipelineTooLarge(f"{count} items offered at once, more than the pipeline ever holds "
                                   f"(pipeline.queue_size = {self.settings.queue_size})")
        if size > self.settings.max_queued_bytes:
            raise PipelineTooLarge(f"{size} bytes offered at once, more than the pipeline ever holds "
                                   f"(pipeline.max_queued_bytes = {self.settings.max_queued_bytes})")

    async def submit(self, item: WorkItem) -> Outcome:
        """Submit one item, waiting for room (items and bytes); return its outcome.

        Raises ``PipelineTooLarge`` at once for an item that could never fit.
        """
        if not self._accepting:
            raise PipelineClosed("the pipeline is not accepting work")
        size = payload_bytes(item)
        self._check_size(1, size)
        while size > self.free_bytes():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._byte_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._byte_waiters:
                    self._byte_waiters.remove(waiter)
            if not self._accepting:
                raise PipelineClosed("the pipeline is not accepting work")
        pending = self._track(item, size)
        try:
            await self._ingest.put(pending)
        except asyncio.CancelledError:
            self._untrack(pending)
            raise
        return await pending.future

    def submit_nowait(self, items: Sequence[WorkItem]) -> list[asyncio.Future[Outcome]]:
        """Submit all of ``items`` at once or none of them.

        ``PipelineFull`` when there is no room now for all of them, in items or in bytes;
        ``PipelineTooLarge`` (a ``PipelineFull``) when there never will be.
        """
        if not self._accepting:
            raise PipelineClosed("the pipeline is not accepting work")
        sizes = [payload_bytes(item) for item in items]
        size = sum(sizes)
        self._check_size(len(items), size)
        if len(items) > self.free_slots():
            raise PipelineFull(f"{len(items)} item(s) offered, room for {self.free_slots()} "
                               f"(pipeline.queue_size = {self.settings.queue_size})")
        if size > self.free_bytes():
            raise PipelineFull(f"{size} bytes offered, room for {self.free_bytes()} "
                               f"(pipeline.max_queued_bytes = {self.settings.max_queued_bytes})")
        futures = []
        for item, item_size in zip(items, sizes):
            pending = self._track(item, item_size)
            self._ingest.put_nowait(pending)
            futures.append(pending.future)
        return futures

    def _track(self, item: WorkItem, size: int = 0) -> _Pending:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future, size)
        self._queued_bytes += size
        self._pending.add(pending)
        self._idle.clear()
        return pending

    def _release_bytes(self, pending: _Pending) -> None:
        """Give back the item's share of ``pipeline.max_queued_bytes``; idempotent."""
        if pending.held_bytes:
            self._queued_bytes -= pending.held_bytes
            pending.held_bytes = 0
            self._wake_byte_waiters()

    def _wake_byte_waiters(self) -> None:
        waiters, self._byte_waiters = self._byte_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _untrack(self, pending: _Pending) -> None:
        self._release_bytes(pending)
        self._pending.discard(pending)
        if not self._pending:
            self._idle.set()

    def run_batch(self, items: Sequence[WorkItem]) -> list[Outcome]:
        """Run ``items`` as one batch now and return their outcomes, in order.

        For a source with a thread of its own and its items already bounded (the folder
        source); call it from that thread, never from the event loop, which it needs. The
        items are decoded in the calling thread, predicted in the model thread (one batch
        at a time, shared with the queued items) and recorded by the observers on the
        event loop; each has its outcome once this returns, all of them or none:

        - ``PipelineClosed`` when the pipeline is not running or closes meanwhile, and
          ``NotRecorded`` (one) when the batch could not be recorded where the detectors
          live: no item has an outcome, none is counted, and the source keeps them;
        - ``ValueError`` for more than ``pipeline.max_batch_size`` items.
        """
        if len(items) > self.settings.max_batch_size:
            raise ValueError(f"{len(items)} items for one batch, more than pipeline.max_batch_size "
                             f"({self.settings.max_batch_size})")
        if not self._accepting or self._loop is None:
            raise PipelineClosed("the pipeline is not accepting work")
        outcomes: list[Outcome | None] = [None] * len(items)
        rows: list[int] = []
        arrays: list[Any] = []
        for row, result in enumerate(self._prepare_group(list(items))):
            if isinstance(result, Exception):
                outcomes[row] = _unprepared(items[row], result)
            else:
                rows.append(row)
                arrays.append(result)
        if arrays:
            self._predict_now(items, rows, arrays, outcomes)
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(items)
        for item, outcome in zip(items, done):
            self._count(item, outcome)
        return done

    def _predict_now(self, items: Sequence[WorkItem], rows: list[int], arrays: list[Any],
                     outcomes: list[Outcome | None]) -> None:
        """Predict ``arrays`` (the items at ``rows``) and record them; fill in ``outcomes``."""
        started = time.perf_counter()
        try:
            result = self._model_pool.submit(self._infer, arrays).result()
        except Exception as error:  # concurrent.futures.CancelledError included
            if not self._accepting:  # the pool shut down, or our turn was cancelled
                raise PipelineClosed("the pipeline closed") from error
            log.error("the model failed on a batch of %d", len(arrays), exc_info=error)
            for row in rows:
                outcomes[row] = _failed(items[row], "model failed", error)
            return
        self.metrics.inference_duration.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(arrays))
        for index, reason in result.rejected.items():
            row = rows[index]
            outcomes[row] = Rejection(items[row].id, items[row].source, reason)
        kept = [row for index, row in enumerate(rows) if index not in result.rejected]
        if not kept:
            return
        predictions = self._predictions([items[row] for row in kept], result)
        try:
            self._record_from_thread(predictions, result.signals)
        except _ObserverFailed as failed:
            # A bug in an observer (a detector, say), not a missing main process: retrying
            # the files would fail the same way for ever, so they fail now, as "error".
            log.error("recording a batch of %d failed", len(kept), exc_info=failed.__cause__)
            for row in kept:
                outcomes[row] = _failed(items[row], "recording the predictions failed", failed.__cause__)
            return
        for row, prediction in zip(kept, predictions):
            outcomes[row] = prediction

    def _record_from_thread(self, predictions: list[Prediction], signals: Any) -> None:
        """Hand a batch to the observers on the event loop and wait until it is recorded."""
        assert self._loop is not None
        try:
            future = asyncio.run_coroutine_threadsafe(self._record(predictions, signals), self._loop)
        except RuntimeError as error:  # the loop is closed
            raise PipelineClosed("the pipeline closed") from error
        with self._recording_lock:
            self._recording.add(future)
        try:
            if not self._accepting:
                future.cancel()
            future.result()
        except concurrent.futures.CancelledError:
            raise PipelineClosed("the pipeline closed before the batch was recorded") from None
        except (PipelineClosed, _ObserverFailed):
            raise
        except Exception as error:
            reason = f"the batch could not be recorded for drift detection: {error}"
            log.error("%s", reason)
            raise NotRecorded(reason) from error
        finally:
            with self._recording_lock:
                self._recording.discard(future)

    async def _record(self, predictions: list[Prediction], signals: Any) -> None:
        assert self.observer is not None
        try:
            recorded = self.observer.observe(predictions, signals)
        except Exception as error:
            raise _ObserverFailed() from error
        if recorded is not None:
            await recorded  # another process records it; failing here means it is gone

    # -- lifecycle -----------------------------------------------------------------------

    async def start(
        self,
        model: Model,
        detectors: DetectorStage | None = None,
        feedback: Feedback | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        """Start the stages. Each batch's predictions go to ``observer``, by default the
        detectors, the feedback join, the metrics and the predictions log of this process."""
        self.model = model
        self._loop = asyncio.get_running_loop()
        self._takes_encoded = isinstance(model, EncodedInputModel)
        self.observer = observer or LocalObservers(self.metrics, detectors, feedback, self.predictions_log)
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
        self._wake_byte_waiters()  # a waiting ``submit`` sees the pipeline closed
        with self._recording_lock:
            recording = list(self._recording)
        for future in recording:  # a ``run_batch`` waiting for its batch to be recorded
            future.cancel()
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
        """Decode what waits in the ingest queue, a group of items per trip to a thread.

        One item per trip costs an event-loop round trip per image; when the loop is busy
        (hundreds of HTTP requests a second, most of them refused) that round trip, not
        the decoding, limits throughput, and the model starves while clients are turned
        away. Taking what is already queued (up to ``_decode_group``) keeps a lone image
        as fast as before and makes the cost per image fall as the queue fills.
        """
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._ingest.get()]
            while len(group) < self._decode_group and not self._ingest.empty():
                group.append(self._ingest.get_nowait())
            self._decoding += len(group)
            self._nothing_coming.clear()
            try:
                results = await loop.run_in_executor(self._decode_pool, self._prepare_group, [p.item for p in group])
            finally:
                self._decoding -= len(group)
            for pending, result in zip(group, results):
                # Decoded (or failed): the array now stands for the image, and the ready
                # queue bounds it; the encoded bytes no longer count.
                self._release_bytes(pending)
                if isinstance(result, Exception):
                    self._resolve(pending, _unprepared(pending.item, result))
                else:
                    await self._ready.put(_Prepared(pending, result))
            self._note_if_nothing_coming()

    def _note_if_nothing_coming(self) -> None:
        if self._at_model == 0 and self._decoding == 0:
            self._nothing_coming.set()

    def _prepare_group(self, items: list[WorkItem]) -> list[np.ndarray | Exception]:
        """Each item's array, or the exception that stopped it (runs in a decode thread)."""
        results: list[np.ndarray | Exception] = []
        for item in items:
            try:
                results.append(self._prepare(item))
            except Exception as error:
                results.append(error)
        return results

    def _prepare(self, item: WorkItem) -> Any:
        assert self.model is not None
        data = read_payload(item.payload)
        if self._takes_encoded:
            # The model may take the encoded bytes itself (decoding on its GPU).
            taken = self.model.prepare_encoded(data, self.settings.max_image_pixels)
            if taken is not None:
                return taken
        image = decode_image(data, self.settings.max_image_pixels)
        return self.model.preprocess(image)

    async def _batch_worker(self) -> None:
        while True:
            self._forming = []
            batch = await collect_batch(
                self._ready,
                self.settings.max_batch_size,
                0.0 if self._flushing else self.settings.max_batch_delay,
                into=self._forming,
                idle=self._nothing_coming if self.settings.adaptive_batching else None,
            )
            if batch:
                self._forming = []
                self._at_model += len(batch)
                self._nothing_coming.clear()
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
                for prepared in batch:
                    self._resolve(prepared.pending, _failed(prepared.pending.item, "model failed", error))
            else:
                try:
                    self._finish_batch(batch, result)
                except Exception as error:  # an observer's bug: fail this batch, keep the stage
                    log.exception("recording a batch of %d failed", len(batch))
                    for prepared in batch:
                        if not prepared.pending.future.done():
                            self._resolve(prepared.pending,
                                          _failed(prepared.pending.item, "recording the predictions failed", error))
            finally:
                self._at_model -= len(batch)
                self._note_if_nothing_coming()

    def _infer(self, arrays: list[Any]) -> BatchResult:
        assert self.model is not None
        if self._takes_encoded:
            result = self.model.predict_inputs(arrays)
        else:
            result = self.model.predict(np.stack(arrays))
        rejected = result.rejected
        if len(result) + len(rejected) != len(arrays) or any(not 0 <= row < len(arrays) for row in rejected):
            raise RuntimeError(f"model returned {len(result)} results and {len(rejected)} rejected rows "
                               f"for {len(arrays)} images")
        return result

    def _finish_batch(self, batch: list[_Prepared], result: BatchResult) -> None:
        assert self.observer is not None
        if result.rejected:
            for row, reason in result.rejected.items():
                item = batch[row].pending.item
                self._resolve(batch[row].pending, Rejection(item.id, item.source, reason))
            batch = [prepared for row, prepared in enumerate(batch) if row not in result.rejected]
            if not batch:
                return
        predictions = self._predictions([prepared.pending.item for prepared in batch], result)
        recorded = self.observer.observe(predictions, result.signals)
        if recorded is None:
            self._resolve_batch(batch, predictions)
            return
        # Answered once the batch is recorded where the detectors live (another process).
        task = asyncio.ensure_future(recorded)
        task.add_done_callback(lambda done: self._recorded(done, batch, predictions))

    def _recorded(self, done: asyncio.Future[None], batch: list[_Prepared], predictions: list[Prediction]) -> None:
        error = None if done.cancelled() else done.exception()
        if not done.cancelled() and error is None:
            self._resolve_batch(batch, predictions)
            return
        reason = "the batch could not be recorded for drift detection"
        if error is not None:
            reason = f"{reason}: {error}"
            log.error("%s", reason)
        for prepared in batch:
            pending = prepared.pending
            if not pending.future.done():
                pending.future.set_exception(NotRecorded(reason))
            self._untrack(pending)

    def _predictions(self, items: Sequence[WorkItem], result: BatchResult) -> list[Prediction]:
        """One prediction per item, from the rows of ``result`` (rejected rows left out)."""
        assert self.model is not None
        names = self.model.class_names
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        class_index = result.class_index.tolist()
        confidence = result.confidence.tolist()
        columns = {name: values.tolist() for name, values in result.signals.items()}
        return [
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
            for row, item in enumerate(items)
        ]

    def _resolve_batch(self, batch: list[_Prepared], predictions: list[Prediction]) -> None:
        for prediction, prepared in zip(predictions, batch):
            self._resolve(prepared.pending, prediction)

    def _count(self, item: WorkItem, outcome: Outcome) -> None:
        outcome_label = "ok" if isinstance(outcome, Prediction) else outcome.outcome
        counter = self._image_counters.get((item.source, outcome_label))
        if counter is None:  # labels() validates and locks on every call: keep the children
            counter = self._image_counters[(item.source, outcome_label)] = self.metrics.images.labels(
                source=item.source, outcome=outcome_label)
        counter.inc()
        self.metrics.end_to_end.observe(time.monotonic() - item.received)

    def _resolve(self, pending: _Pending, outcome: Outcome) -> None:
        self._count(pending.item, outcome)
        if not pending.future.done():
            pending.future.set_result(outcome)
        self._untrack(pending)


def _failed(item: WorkItem, what: str, error: BaseException | None) -> Rejection:
    """The ``error`` outcome of an item whose batch failed through no fault of its own."""
    return Rejection(item.id, item.source, f"{what}: {type(error).__name__}: {error}", "error")


def _unprepared(item: WorkItem, error: Exception) -> Rejection:
    """The outcome of an item that could not be decoded or preprocessed."""
    if isinstance(error, (DecodeError, ValueError)):
        return Rejection(item.id, item.source, str(error))
    # A bug in a plugin's preprocess must not stop the stage.
    log.error("preprocessing %s failed unexpectedly", item.id, exc_info=error)
    return Rejection(item.id, item.source, f"internal error while preprocessing: {type(error).__name__}: {error}",
                     "error")
