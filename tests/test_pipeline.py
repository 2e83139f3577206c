"""The pipeline in-process with a framework-free model: batching, order, errors, back-pressure."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from monitord_testplugin import BrightnessModel, png

from monitord.batcher import collect_batch
from monitord.detectors import DetectorStage, DetectorState, DriftEvent
from monitord.items import Prediction, Rejection, WorkItem
from monitord.model import BatchResult
from monitord.metrics import Metrics
from monitord.pipeline import NotRecorded, Pipeline, PipelineClosed, PipelineFull, PipelineTooLarge
from monitord.settings import DetectorSpec, PipelineSettings
from monitord.transport.contract import TransportUnavailable
from monitord.transport.entries import PredictionBatch


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    metrics.refresh()  # as a scrape does
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Stream:
    """Where a test pipeline publishes: it keeps every batch, optionally hands the signals
    to a detector stage, and fails as told."""

    def __init__(self, stage: DetectorStage | None = None, fail: Exception | None = None) -> None:
        self.batches: list[PredictionBatch] = []
        self.stage = stage
        self.fail = fail
        self.hold: asyncio.Event | None = None

    async def publish(self, batch: PredictionBatch) -> None:
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append(batch)
        if self.stage is not None:
            self.stage.update(batch.signals)

    @property
    def ids(self) -> list[list[str]]:
        return [[prediction.id for prediction in batch.predictions] for batch in self.batches]


async def started(model=None, stream: Stream | None = None, **settings) -> tuple[Pipeline, Metrics, BrightnessModel]:
    metrics = Metrics()
    pipeline = Pipeline(PipelineSettings(**settings), metrics)
    model = model or BrightnessModel()
    pipeline.stream = stream or Stream()  # type: ignore[attr-defined]
    await pipeline.start(model, pipeline.stream.publish)  # type: ignore[attr-defined]
    return pipeline, metrics, model


async def test_collect_batch_closes_on_size_then_on_delay() -> None:
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(5):
        queue.put_nowait(i)
    assert await collect_batch(queue, max_size=3, max_delay=10) == [0, 1, 2]
    loop = asyncio.get_running_loop()
    begun = loop.time()
    assert await collect_batch(queue, max_size=3, max_delay=0.2) == [3, 4]
    assert loop.time() - begun >= 0.19  # waited for the batch to fill, then gave up
    queue.put_nowait(7)
    queue.put_nowait(None)
    queue.put_nowait(8)
    assert await collect_batch(queue, max_size=10, max_delay=10) == [7]  # None flushes at once


async def test_outcomes_arrive_in_submission_order_with_batching() -> None:
    # Full batches only (never a partial one sent early), whatever the machine's speed.
    pipeline, metrics, model = await started(max_batch_size=4, max_batch_delay=30, adaptive_batching=False)
    levels = [10, 240, 30, 250, 5, 200, 100, 220, 15, 245, 60, 230]
    futures = pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(v)) for i, v in enumerate(levels)])
    outcomes = await asyncio.gather(*futures)
    assert [o.id for o in outcomes] == [str(i) for i in range(len(levels))]
    assert [o.class_name for o in outcomes] == ["bright" if v > 127 else "dark" for v in levels]
    assert model.batches == [4, 4, 4]
    assert sample(metrics, "monitord_images_total", source="t", outcome="ok") == len(levels)
    assert sample(metrics, "monitord_batch_size_count") == len(model.batches)
    # Every prediction went to the stream, once, with its batch's signal columns (two decode
    # threads may finish their groups in either order: a batch is not in submission order).
    assert sorted(pid for ids in pipeline.stream.ids for pid in ids) == sorted(str(i) for i in range(len(levels)))
    assert all(len(batch.signals["brightness"]) == len(batch) for batch in pipeline.stream.batches)
    await pipeline.close()


async def test_undecodable_item_is_rejected_and_its_neighbours_go_through() -> None:
    pipeline, metrics, _ = await started()
    futures = pipeline.submit_nowait([
        WorkItem(id="good1", source="t", payload=png(250)),
        WorkItem(id="bad", source="t", payload=b"\x89PNG\r\n\x1a\n garbage"),
        WorkItem(id="empty", source="t", payload=b""),
        WorkItem(id="good2", source="t", payload=png(0)),
    ])
    good1, bad, empty, good2 = await asyncio.gather(*futures)
    assert isinstance(good1, Prediction) and isinstance(good2, Prediction)
    assert isinstance(bad, Rejection) and bad.outcome == "rejected"
    assert "empty input" in empty.reason
    assert sample(metrics, "monitord_images_total", source="t", outcome="rejected") == 2
    await pipeline.close()


async def test_decompression_bomb_is_refused_from_the_header() -> None:
    pipeline, _, _ = await started(max_image_pixels=1000)
    (outcome,) = await asyncio.gather(*pipeline.submit_nowait([WorkItem(id="big", source="t", payload=png(9, size=64))]))
    assert isinstance(outcome, Rejection) and "4096 pixels, over the limit of 1000" in outcome.reason
    await pipeline.close()


async def test_a_failing_model_rejects_its_batch_as_error_and_the_pipeline_goes_on() -> None:
    pipeline, metrics, _ = await started(model=BrightnessModel(fail_on=128 / 255), max_batch_size=1)
    poisoned = await asyncio.gather(*pipeline.submit_nowait([WorkItem(id="p", source="t", payload=png(128))]))
    assert isinstance(poisoned[0], Rejection) and poisoned[0].outcome == "error"
    assert "poisoned batch" in poisoned[0].reason
    healthy = await asyncio.gather(*pipeline.submit_nowait([WorkItem(id="h", source="t", payload=png(250))]))
    assert isinstance(healthy[0], Prediction)
    assert sample(metrics, "monitord_images_total", source="t", outcome="error") == 1
    await pipeline.close()


async def test_submit_nowait_is_all_or_nothing_when_full() -> None:
    metrics = Metrics()
    pipeline = Pipeline(PipelineSettings(queue_size=4), metrics)
    with pytest.raises(PipelineClosed):
        pipeline.submit_nowait([WorkItem(id="early", source="t", payload=png(1))])
    pipeline._accepting = True  # accept without workers, so the queue cannot drain
    pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(1)) for i in range(3)])
    with pytest.raises(PipelineFull):
        pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(1)) for i in range(2)])
    assert pipeline.free_slots() == 1
    assert sample(metrics, "monitord_queue_depth", stage="ingest") == 3


async def test_drain_flushes_a_partial_batch_without_waiting_for_the_delay() -> None:
    pipeline, _, model = await started(max_batch_size=64, max_batch_delay=30, adaptive_batching=False)
    futures = pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(200)) for i in range(5)])
    await asyncio.sleep(0.2)
    assert not any(f.done() for f in futures)  # waiting for the batch to fill
    await asyncio.wait_for(pipeline.drain(), timeout=5)
    assert all(f.done() for f in futures) and model.batches == [5]
    await pipeline.close()


async def test_an_idle_model_takes_a_lone_image_at_once_and_a_busy_one_gets_batches() -> None:
    class SlowModel(BrightnessModel):
        """Holds each batch until released, so the test decides when the model is busy."""

        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def predict(self, batch):
            self.release.wait(10)
            return super().predict(batch)

    model = SlowModel()
    pipeline, _, _ = await started(model=model, max_batch_size=64, max_batch_delay=30, decode_workers=1)
    model.release.set()
    # Idle model: one image does not wait the 30 s batch delay.
    (alone,) = await asyncio.wait_for(
        asyncio.gather(*pipeline.submit_nowait([WorkItem(id="a", source="t", payload=png(9))])), 5)
    assert isinstance(alone, Prediction) and model.batches == [1]
    # Busy model: what arrives meanwhile forms one batch, sent as soon as the model is free.
    model.release.clear()
    first = pipeline.submit_nowait([WorkItem(id="b", source="t", payload=png(9))])
    await asyncio.sleep(0.3)  # "b" is at the model, held
    rest = pipeline.submit_nowait([WorkItem(id=f"c{i}", source="t", payload=png(9)) for i in range(6)])
    await asyncio.sleep(0.3)  # the six are decoded and wait in the forming batch
    model.release.set()
    await asyncio.wait_for(asyncio.gather(*first, *rest), 5)
    assert model.batches == [1, 1, 6]
    await pipeline.close()


class ThresholdDetector:
    """Raises drift when a value exceeds a threshold (a stand-in for real detectors)."""

    def __init__(self, spec: DetectorSpec, reference) -> None:
        self.threshold = float(spec.params().get("threshold", 0.5))
        self.count = 0
        self.last = 0.0
        self.reference = reference

    def update(self, values: np.ndarray) -> list[DriftEvent]:
        self.count += len(values)
        self.last = float(values[-1])
        return [DriftEvent(int(i), "drift") for i in np.flatnonzero(values > self.threshold)]

    @property
    def state(self) -> DetectorState:
        level = "drift" if self.last > self.threshold else "ok"
        return DetectorState(self.last, self.threshold, None, level, self.count)

    def snapshot(self) -> dict:
        return {"count": self.count}

    def restore(self, snapshot) -> None:
        self.count = snapshot["count"]


async def test_detector_stage_sees_every_signal_value_and_exports_state() -> None:
    metrics = Metrics()
    stage = DetectorStage.build(
        [DetectorSpec(type="threshold", signal="brightness", threshold=0.9),
         DetectorSpec(type="threshold", signal="confidence", name="conf")],
        lambda kind: ThresholdDetector,
        BrightnessModel.reference_signals,
        metrics,
    )
    pipeline = Pipeline(PipelineSettings(max_batch_size=4), metrics)
    await pipeline.start(BrightnessModel(), Stream(stage).publish)
    levels = [10, 250, 20, 30, 255, 40]
    await asyncio.gather(*pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(v)) for i, v in enumerate(levels)]))
    brightness, confidence = stage.detectors
    assert brightness.detector.count == len(levels) and confidence.detector.count == len(levels)
    assert confidence.detector.reference is not None  # the model's reference reached the detector
    labels = {"detector": "threshold_brightness", "type": "threshold", "signal": "brightness"}
    assert sample(metrics, "monitord_drift_events_total", **labels, level="drift") == 2
    assert sample(metrics, "monitord_drift_threshold", **labels) == 0.9
    assert [s["name"] for s in stage.states()] == ["threshold_brightness", "conf"]
    await pipeline.close()


def test_detector_names_must_be_unique() -> None:
    spec = DetectorSpec(type="threshold", signal="confidence")
    with pytest.raises(ValueError, match="repeated: threshold_confidence"):
        DetectorStage.build([spec, spec], lambda kind: ThresholdDetector, {}, Metrics())


class GatedModel(BrightnessModel):
    """Preprocessing blocks until ``gate`` is set: accepted images stay undecoded meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def preprocess(self, image):
        self.entered.set()
        self.gate.wait(10)
        return super().preprocess(image)


async def test_queued_bytes_are_bounded_and_given_back_once_decoded(tmp_path) -> None:
    image = png(200, size=32)
    size = len(image)
    model = GatedModel()
    pipeline, _, _ = await started(model=model, decode_workers=1, queue_size=8, max_queued_bytes=2 * size + size // 2)
    try:
        first = pipeline.submit_nowait([WorkItem(id="a", source="t", payload=image)])
        assert await asyncio.to_thread(model.entered.wait, 5)  # "a" is being decoded: still counted
        second = pipeline.submit_nowait([WorkItem(id="b", source="t", payload=image)])
        assert pipeline.queued_bytes == 2 * size
        # All or nothing: a small item beside one that does not fit is refused too.
        with pytest.raises(PipelineFull, match="pipeline.max_queued_bytes") as refused:
            pipeline.submit_nowait([WorkItem(id="s", source="t", payload=png(1)), WorkItem(id="c", source="t", payload=image)])
        assert not isinstance(refused.value, PipelineTooLarge)
        assert pipeline.queued_bytes == 2 * size and pipeline.free_slots() == 7
        # A folder item carries a path: it takes a slot but no bytes, and is not held back.
        path = tmp_path / "x.png"
        path.write_bytes(png(250))
        from_folder = pipeline.submit_nowait([WorkItem(id="f", source="folder", payload=path)])
        assert pipeline.queued_bytes == 2 * size
        # The waiting variant waits for bytes, not only for slots.
        waiting = asyncio.create_task(pipeline.submit(WorkItem(id="w", source="t", payload=image)))
        await asyncio.sleep(0.1)
        assert not waiting.done() and pipeline.queued_bytes == 2 * size
        model.gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(*first, *second, *from_folder, waiting), 10)
        assert [outcome.id for outcome in outcomes] == ["a", "b", "f", "w"]
        assert all(isinstance(outcome, Prediction) for outcome in outcomes)
        assert pipeline.queued_bytes == 0 and pipeline.free_bytes() == 2 * size + size // 2
    finally:
        model.gate.set()
        await pipeline.close()


async def test_what_could_never_fit_is_refused_at_once_as_too_large() -> None:
    pipeline, _, _ = await started(queue_size=4, max_queued_bytes=1000)
    big = WorkItem(id="big", source="t", payload=b"\0" * 1001)
    with pytest.raises(PipelineTooLarge, match="pipeline.max_queued_bytes"):
        pipeline.submit_nowait([big])
    with pytest.raises(PipelineTooLarge, match="pipeline.max_queued_bytes"):
        await asyncio.wait_for(pipeline.submit(big), 1)  # would otherwise wait for ever
    with pytest.raises(PipelineTooLarge, match="pipeline.queue_size"):
        pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(1)) for i in range(5)])
    assert pipeline.queued_bytes == 0 and pipeline.free_slots() == 4
    await pipeline.close()


async def test_close_releases_queued_bytes_and_wakes_a_submit_waiting_for_them() -> None:
    metrics = Metrics()
    pipeline = Pipeline(PipelineSettings(max_queued_bytes=100), metrics)
    pipeline._accepting = True  # accept without workers, so nothing is ever decoded
    held = pipeline.submit_nowait([WorkItem(id="held", source="t", payload=b"\0" * 80)])
    waiting = asyncio.create_task(pipeline.submit(WorkItem(id="w", source="t", payload=b"\0" * 30)))
    await asyncio.sleep(0.05)
    assert not waiting.done() and pipeline.queued_bytes == 80
    await pipeline.close()
    with pytest.raises(PipelineClosed):
        await asyncio.wait_for(waiting, 1)
    assert held[0].cancelled() and pipeline.queued_bytes == 0


class RowRejectingModel(BrightnessModel):
    """Finds images of brightness 128 unusable while classifying (as a device decoder
    might) and says so per row, classifying the rest of the batch."""

    def predict(self, batch: np.ndarray):
        from monitord.model import BatchResult

        result = super().predict(batch)
        bad = np.isclose(result.signals["brightness"], 128 / 255, atol=0.01)
        keep = ~bad
        return BatchResult(
            class_index=result.class_index[keep],
            confidence=result.confidence[keep],
            signals={name: values[keep] for name, values in result.signals.items()},
            rejected={int(row): f"row {int(row)} could not be read" for row in np.flatnonzero(bad)},
        )


async def test_rows_a_model_rejects_are_refused_alone_and_never_reach_the_detectors() -> None:
    metrics = Metrics()
    stage = DetectorStage.build([DetectorSpec(type="threshold", signal="brightness", threshold=2.0)],
                                lambda kind: ThresholdDetector, {}, metrics)
    pipeline = Pipeline(PipelineSettings(max_batch_size=8, max_batch_delay=0.05), metrics)
    await pipeline.start(RowRejectingModel(), Stream(stage).publish)
    levels = [10, 128, 250, 128, 30, 240]
    outcomes = await asyncio.gather(*pipeline.submit_nowait(
        [WorkItem(id=str(i), source="t", payload=png(v)) for i, v in enumerate(levels)]))
    assert [o.id for o in outcomes] == [str(i) for i in range(len(levels))]
    rejected = [o for o in outcomes if isinstance(o, Rejection)]
    assert [o.id for o in rejected] == ["1", "3"] and all(o.outcome == "rejected" for o in rejected)
    assert all("could not be read" in o.reason for o in rejected)
    predicted = [o for o in outcomes if isinstance(o, Prediction)]
    assert [(o.id, o.class_name) for o in predicted] == [("0", "dark"), ("2", "bright"), ("4", "dark"), ("5", "bright")]
    assert [o.signals["brightness"] for o in predicted] == pytest.approx([v / 255 for v in (10, 250, 30, 240)], abs=0.01)
    assert stage.detectors[0].detector.count == 4  # the rejected rows' signals never reached it
    assert sample(metrics, "monitord_images_total", source="t", outcome="rejected") == 2
    assert sample(metrics, "monitord_images_total", source="t", outcome="ok") == 4
    await pipeline.close()


class MiscountingModel(BrightnessModel):
    def predict(self, batch: np.ndarray):
        from monitord.model import BatchResult

        result = super().predict(batch)
        return BatchResult(result.class_index, result.confidence, result.signals, rejected={0: "counted twice"})


async def test_a_model_whose_rows_do_not_add_up_fails_its_batch_as_error() -> None:
    pipeline, metrics, _ = await started(model=MiscountingModel(), max_batch_size=4, max_batch_delay=0.05)
    outcomes = await asyncio.gather(*pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(40))
                                                             for i in range(3)]))
    assert all(isinstance(o, Rejection) and o.outcome == "error" for o in outcomes)
    assert "rejected rows" in outcomes[0].reason
    await pipeline.close()


async def test_a_batch_the_stream_cannot_take_has_no_outcome_so_its_source_keeps_the_items() -> None:
    metrics = Metrics()
    pipeline = Pipeline(PipelineSettings(max_batch_size=4), metrics)
    stream = Stream(fail=TransportUnavailable("redis://127.0.0.1:6399/0 refused the connection"))
    await pipeline.start(BrightnessModel(), stream.publish)
    futures = pipeline.submit_nowait([WorkItem(id=str(i), source="t", payload=png(40 * i)) for i in range(3)])
    results = await asyncio.gather(*futures, return_exceptions=True)
    # Not an outcome (a Rejection would move a good folder file to failed/): a PipelineClosed,
    # which sources treat as "keep it for later".
    assert all(isinstance(result, NotRecorded) and isinstance(result, PipelineClosed) for result in results)
    assert "refused the connection" in str(results[0])
    for outcome in ("ok", "error", "rejected"):
        assert sample(metrics, "monitord_images_total", source="t", outcome=outcome) == 0
    await asyncio.wait_for(pipeline.drain(), 5)  # nothing left pending
    await pipeline.close()


async def test_a_publishing_bug_fails_its_items_as_error_and_the_next_batch_still_runs() -> None:
    """Kept for a retry, such items would fail the same way for ever: an outcome, "error"."""
    pipeline, metrics, _ = await started(stream=Stream(fail=ZeroDivisionError("a bug divided by zero")),
                                         max_batch_delay=0.0)
    first = await asyncio.wait_for(asyncio.gather(*pipeline.submit_nowait([WorkItem(id="a", source="t", payload=png(9))])), 5)
    assert isinstance(first[0], Rejection) and first[0].outcome == "error"
    assert "ZeroDivisionError: a bug divided by zero" in first[0].reason
    second = await asyncio.wait_for(asyncio.gather(*pipeline.submit_nowait([WorkItem(id="b", source="t", payload=png(9))])), 5)
    assert isinstance(second[0], Rejection) and second[0].outcome == "error"
    assert sample(metrics, "monitord_images_total", source="t", outcome="error") == 2
    await pipeline.close()


async def test_clients_are_answered_only_once_their_batch_is_in_the_stream() -> None:
    stream = Stream()
    stream.hold = asyncio.Event()
    pipeline, _, _ = await started(stream=stream, max_batch_delay=0.0)
    futures = pipeline.submit_nowait([WorkItem(id="a", source="t", payload=png(9))])
    await asyncio.sleep(0.3)  # predicted long ago; waiting for the stream
    assert not futures[0].done() and stream.batches == []
    stream.hold.set()
    (outcome,) = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert isinstance(outcome, Prediction) and stream.ids == [["a"]]
    await pipeline.close()


class _RejectingBrightness(BrightnessModel):
    """Refuses, while classifying, the rows whose mean pixel is exactly 0 (a black image)."""

    def predict(self, batch: np.ndarray) -> BatchResult:
        black = [row for row in range(len(batch)) if float(batch[row].mean()) == 0.0]
        kept = np.delete(batch, black, axis=0)
        result = super().predict(kept)
        return BatchResult(result.class_index, result.confidence, result.signals,
                           rejected={row: "a black image" for row in black})


async def test_run_from_another_thread_returns_a_groups_outcomes_in_order() -> None:
    pipeline, metrics, _ = await started(model=_RejectingBrightness(), max_batch_size=8)
    loop = asyncio.get_running_loop()
    items = [
        WorkItem(id="bright", source="t", payload=png(250)),
        WorkItem(id="broken", source="t", payload=b"not an image"),
        WorkItem(id="black", source="t", payload=png(0)),
        WorkItem(id="dark", source="t", payload=png(20)),
    ]
    # As the folder's thread does: one trip to the event loop for the group.
    outcomes = await asyncio.to_thread(lambda: asyncio.run_coroutine_threadsafe(pipeline.run(items), loop).result())
    assert [outcome.id for outcome in outcomes] == ["bright", "broken", "black", "dark"]
    assert isinstance(outcomes[0], Prediction) and outcomes[0].class_name == "bright"
    assert isinstance(outcomes[1], Rejection) and outcomes[1].outcome == "rejected"
    assert isinstance(outcomes[2], Rejection) and outcomes[2].reason == "a black image"
    assert isinstance(outcomes[3], Prediction) and outcomes[3].class_name == "dark"
    assert [pid for ids in pipeline.stream.ids for pid in ids] == ["bright", "dark"]  # predictions only
    assert sample(metrics, "monitord_images_total", source="t", outcome="ok") == 2
    assert sample(metrics, "monitord_images_total", source="t", outcome="rejected") == 2
    await pipeline.close()
    with pytest.raises(PipelineClosed):
        await pipeline.run(items[:1])


async def test_a_group_waiting_for_the_stream_fails_with_pipeline_closed_when_the_pipeline_closes() -> None:
    stream = Stream()
    stream.hold = asyncio.Event()
    pipeline, metrics, _ = await started(stream=stream)
    running = asyncio.ensure_future(pipeline.run([WorkItem(id="a", source="t", payload=png(9))]))
    await asyncio.sleep(0.3)
    assert not running.done()  # no outcome before the batch is in the stream
    await pipeline.close()
    with pytest.raises(PipelineClosed):
        await asyncio.wait_for(running, 5)
    assert sample(metrics, "monitord_images_total", source="t", outcome="ok") == 0


async def test_work_is_refused_while_the_monitor_lags_too_far_behind() -> None:
    lag = [0]
    metrics = Metrics()
    pipeline = Pipeline(PipelineSettings(), metrics, lag=lambda: lag[0], max_lag=10)
    await pipeline.start(BrightnessModel(), Stream().publish)
    assert pipeline.overloaded() is None
    lag[0] = 11
    assert "bus.max_lag = 10" in pipeline.overloaded()
    with pytest.raises(PipelineFull, match="11 batches behind"):
        pipeline.submit_nowait([WorkItem(id="a", source="t", payload=png(9))])
    lag[0] = 3
    (outcome,) = await asyncio.gather(*pipeline.submit_nowait([WorkItem(id="b", source="t", payload=png(9))]))
    assert isinstance(outcome, Prediction)
    await pipeline.close()


async def test_a_group_cancelled_while_it_waits_for_room_leaves_nothing_behind() -> None:
    """The item whose turn in the queue never came is not counted as pending: it does not
    hold bytes, and the pipeline is idle once what was queued has its outcome."""
    pipeline = Pipeline(PipelineSettings(queue_size=2), Metrics())
    pipeline._accepting = True  # accept without workers, so the queue cannot drain
    group = asyncio.create_task(pipeline.run([WorkItem(id=str(i), source="t", payload=png(1)) for i in range(3)]))
    while len(pipeline._pending) < 3:  # two queued, the third taken in and waiting for room
        await asyncio.sleep(0.01)
    assert pipeline.free_slots() == 0
    group.cancel()
    with pytest.raises(asyncio.CancelledError):
        await group
    assert len(pipeline._pending) == 2  # the queued two only
    assert pipeline.queued_bytes == 2 * len(png(1))
