"""The pipeline: bounded queues from sources to the stream.

```
submit ─► ingest queue ─► decode workers (threads) ─► ready queue ─► micro-batcher
       ─► batch queue ─► model (its own thread) ─► signals ─► publish to the stream
       ─► each item's future resolves with a Prediction or a Rejection
```

Every queue is bounded, so a source feels back-pressure: ``submit`` waits for room,
``submit_nowait`` refuses with ``PipelineFull`` (HTTP turns that into 503). The model
runs one batch while the batcher fills the next. A batch's items get their outcomes once
the batch is safe in the stream (``transport.contract``): a client is answered, or a file
moved, only then; when the stream cannot take it, the items fail with ``NotRecorded`` and
their source keeps them (the client is told to retry, the file stays in the inbox). When
the monitor falls more than ``bus.max_lag`` entries behind, new work is refused the same
way (``overloaded``), so nothing grows without bound anywhere.

A source that holds its items in groups of its own (the folder source claims a batch of
files at a time) submits a group with ``run`` and gets the group's outcomes: one trip to
the event loop per group, not per item.

Room is counted twice: in items (``pipeline.queue_size``) and in the encoded bytes of
items accepted but not yet decoded (``pipeline.max_queued_bytes``), so a queue of large
images cannot take more memory than the operator allowed. Only ``bytes`` payloads count;
a folder item carries a path (or the bytes its claim already read), which the decode
threads read. An item's bytes are released once it is decoded (or resolved, or cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from monitord.batcher import collect_batch
from monitord.cancelling import cancel_and_wait
from monitord.decode import DecodeError, decode_image, read_payload
from monitord.items import Outcome, Prediction, Rejection, WorkItem
from monitord.metrics import Metrics
from monitord.model import BatchResult, EncodedInputModel, Model
from monitord.settings import PipelineSettings
from monitord.status_page.thumbnails import Thumbnails, shrink
from monitord.transport.contract import TransportUnavailable
from monitord.transport.entries import PredictionBatch

#: Publishes a batch to the stream; returns once it is safe there.
Publish = Callable[[PredictionBatch], Awaitable[None]]

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
    """An item's batch could not be put in the stream (it cannot be reached). The item has
    no outcome, through no fault of its own: its future fails with this, and the source
    keeps it for later, as at a shutdown (a folder file stays in the inbox; an HTTP client
    is told to retry)."""


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
    #: A PNG thumbnail of the image for the status page, when one was sampled.
    thumbnail: bytes | None = None


class Pipeline:
    """Runs submitted images through decode, micro-batching and the model, and publishes
    each batch to the stream."""

    def __init__(
        self,
        settings: PipelineSettings,
        metrics: Metrics,
        origin: str = "",
        lag: Callable[[], int | None] = lambda: None,
        max_lag: int | None = None,
        thumbnails: Thumbnails | None = None,
    ) -> None:
        self.settings = settings
        #: Where sampled images go, for the status page (None: nowhere).
        self.thumbnails = thumbnails
        self.metrics = metrics
        #: This process, as its batches name it in the stream.
        self.origin = origin
        self._lag = lag
        self._max_lag = max_lag
        self.model: Model | None = None
        self._takes_encoded = False
        self._derive: Callable[[BatchResult], BatchResult] | None = None
        self._image_counters: dict[tuple[str, str], Any] = {}
        self._publish: Publish | None = None
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
        #: Batches being published; ``close`` cancels them.
        self._publishing: set[asyncio.Future[None]] = set()
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

    def overloaded(self) -> str | None:
        """Why no new work should be taken now although there is room (the monitor is too
        far behind), or None."""
        lag = self._lag()
        if self._max_lag is not None and lag is not None and lag > self._max_lag:
            return (f"the monitor is {lag} batches behind, more than bus.max_lag = {self._max_lag}; "
                    "retry once it has caught up")
        return None

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
        return await (await self._enqueue(item))

    async def _enqueue(self, item: WorkItem) -> asyncio.Future[Outcome]:
        """Queue ``item`` once there is room for it; its outcome's future."""
        size = payload_bytes(item)
        self._check_size(1, size)
        while size > self.free_bytes() and self._accepting:
            await self._bytes_released()
        if not self._accepting:
            raise PipelineClosed("the pipeline is not accepting work")
        pending = self._track(item, size)
        try:
            await self._ingest.put(pending)
        except asyncio.CancelledError:  # never queued: it must not keep the pipeline busy
            self._untrack(pending)
            raise
        return pending.future

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
        overloaded = self.overloaded()
        if overloaded is not None:
            raise PipelineFull(overloaded)
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

    async def run(self, items: Sequence[WorkItem]) -> list[Outcome]:
        """Submit a group of items, waiting for room, and return their outcomes in order.

        For a source that holds its items in groups (the folder source): one trip to the
        event loop for the whole group. ``PipelineClosed`` when the pipeline closes before
        every item has its outcome (``NotRecorded`` when the stream could not take their
        batch): the source keeps the items for later.
        """
        futures = []
        try:
            for item in items:
                futures.append(await self._enqueue(item))
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    async def _bytes_released(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._byte_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._byte_waiters:
                self._byte_waiters.remove(waiter)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, model: Model, publish: Publish,
                    derive: Callable[[BatchResult], BatchResult] | None = None) -> None:
        """Start the stages; each batch of predictions goes to the stream through ``publish``.

        ``derive`` adds signals to each model result in the model's thread (the reference's
        embedding projection)."""
        self.model = model
        self._derive = derive
        self._takes_encoded = isinstance(model, EncodedInputModel)
        self._publish = publish
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
        await cancel_and_wait([*self._publishing, *self._tasks])
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
                    await self._ready.put(_Prepared(pending, *result))
            self._note_if_nothing_coming()

    def _note_if_nothing_coming(self) -> None:
        if self._at_model == 0 and self._decoding == 0:
            self._nothing_coming.set()

    def _prepare_group(self, items: list[WorkItem]) -> list[tuple[Any, bytes | None] | Exception]:
        """Each item's array and thumbnail, or the exception that stopped it (runs in a decode thread)."""
        results: list[tuple[Any, bytes | None] | Exception] = []
        for item in items:
            try:
                results.append(self._prepare(item))
            except Exception as error:
                results.append(error)
        return results

    def _prepare(self, item: WorkItem) -> tuple[Any, bytes | None]:
        """The model's input for ``item``, and a thumbnail if the status page takes one now."""
        assert self.model is not None
        data = read_payload(item.payload)
        if self._takes_encoded:
            # The model may take the encoded bytes itself (decoding on its GPU).
            taken = self.model.prepare_encoded(data, self.settings.max_image_pixels)
            if taken is not None:
                return taken, self._thumbnail_of_encoded(data)
        image = decode_image(data, self.settings.max_image_pixels)
        thumbnail = self.thumbnails.sample(image) if self.thumbnails is not None else None
        return self.model.preprocess(image), thumbnail

    def _thumbnail_of_encoded(self, data: bytes) -> bytes | None:
        """A thumbnail of an image the model decodes itself: decoded here with Pillow only
        for the few a second the status page takes."""
        if self.thumbnails is None or not self.thumbnails.take():
            return None
        try:
            return shrink(decode_image(data, self.settings.max_image_pixels))
        except DecodeError:  # the model's decoder read it; the page goes without
            return None

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
                except Exception as error:  # a bug: fail this batch, keep the stage
                    log.exception("handing a batch of %d on failed", len(batch))
                    for prepared in batch:
                        if not prepared.pending.future.done():
                            self._resolve(prepared.pending,
                                          _failed(prepared.pending.item, "handing the predictions on failed", error))
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
        return self._derive(result) if self._derive is not None else result

    def _finish_batch(self, batch: list[_Prepared], result: BatchResult) -> None:
        assert self._publish is not None
        if result.rejected:
            for row, reason in result.rejected.items():
                item = batch[row].pending.item
                self._resolve(batch[row].pending, Rejection(item.id, item.source, reason))
            batch = [prepared for row, prepared in enumerate(batch) if row not in result.rejected]
            if not batch:
                return
        predictions = self._predictions([prepared.pending.item for prepared in batch], result)
        signals = {name: values for name, values in result.signals.items()}
        # Answered once the batch is safe in the stream; the model goes on meanwhile.
        task = asyncio.ensure_future(self._publish(PredictionBatch(predictions, signals, self.origin)))
        self._publishing.add(task)
        task.add_done_callback(lambda done: self._published(done, batch, predictions))

    def _published(self, done: asyncio.Future[None], batch: list[_Prepared], predictions: list[Prediction]) -> None:
        self._publishing.discard(done)
        error = None if done.cancelled() else done.exception()
        if not done.cancelled() and error is None:
            self._resolve_batch(batch, predictions)
            return
        if error is not None and not isinstance(error, TransportUnavailable):
            # A bug, not an unreachable stream: kept for a retry, the items would fail the
            # same way for ever, so they get an outcome, "error", instead.
            log.error("publishing a batch of %d failed", len(batch), exc_info=error)
            for prepared in batch:
                if not prepared.pending.future.done():
                    self._resolve(prepared.pending, _failed(prepared.pending.item, "publishing the predictions failed",
                                                            error))
            return
        reason = "the batch could not be put in the stream for drift detection"
        if error is not None:
            reason = f"{reason}: {error}"
            log.warning("%s", reason)
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
            if prepared.thumbnail is not None and self.thumbnails is not None:
                self.thumbnails.add(prediction.class_name, prediction.confidence, prediction.time, prepared.thumbnail)
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
