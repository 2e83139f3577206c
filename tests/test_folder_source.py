"""The folder source end to end: the real daemon, real files, real metrics; then the
source in-process with a pipeline stub, for what a daemon cannot be made to do on cue."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import monitord.builtin.folder_source as folder_source_module
from daemon_process import wait_for
from digit_files import drop_atomically, files_under, held_out_pngs
from monitord.builtin.folder_source import FolderSource
from monitord.items import Prediction, WorkItem
from monitord.metrics import Metrics
from monitord.settings import Settings
from monitord.sources import Partition, SourceContext


def test_200_held_out_digits_are_processed_and_classified(daemon) -> None:
    process = daemon()
    digits = held_out_pngs(200)
    for index, (label, data) in enumerate(digits):
        drop_atomically(process.inbox, f"{label}/digit-{index:03d}.png", data)

    wait_for(lambda: len(files_under(process.processed)) == 200, timeout=120, message="200 processed files")
    assert process.metric("monitord_images_total", source="folder", outcome="ok") == 200
    assert process.metric("monitord_images_total", source="folder", outcome="rejected") == 0
    assert files_under(process.inbox) == [] and files_under(process.failed) == []

    records = [json.loads(p.read_text()) for p in files_under(process.processed, "*.png.json")]
    assert len(records) == 200
    for record in records:
        assert record["label"] == record["id"].split("/")[0]  # label from the sub-folder
        assert {"confidence", "entropy", "margin", "predicted_class", "activation_mean", "activation_std"} <= set(
            record["signals"]
        )
    accuracy = sum(record["correct"] for record in records) / len(records)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f} on held-out digits"

    metrics = process.metrics()
    assert sum(v for (name, _), v in metrics.items() if name == "monitord_predictions_total") == 200
    assert metrics[("monitord_prediction_confidence_count", ())] == 200
    assert metrics[("monitord_end_to_end_duration_seconds_count", ())] == 200
    assert metrics[("monitord_batch_size_sum", ())] == 200

    log_lines = (process.state / "predictions.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in log_lines]
    assert len(logged) == 200
    assert {"id", "source", "time", "class", "confidence", "signals"} <= set(logged[0])
    assert process.terminate() == 0


def test_slow_writer_is_not_read_early_and_a_corrupt_file_fails_alone(daemon) -> None:
    process = daemon()
    (label, data), = held_out_pngs(1)
    slow = process.inbox / str(label) / "slow.png"
    slow.parent.mkdir(parents=True)
    chunks = [data[i:i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    with slow.open("wb") as writer:
        for chunk in chunks:
            writer.write(chunk)
            writer.flush()
            time.sleep(0.4)  # longer than folder.settle_seconds between chunks
            assert slow.exists(), "file was taken before its last byte"
            assert files_under(process.processed) == [] and files_under(process.failed) == []
    wait_for(lambda: (process.processed / str(label) / "slow.png").exists(), message="slow file processed")
    prediction = json.loads((process.processed / str(label) / "slow.png.json").read_text())
    assert prediction["class"] == str(label)

    drop_atomically(process.inbox, "broken.png", b"\x89PNG\r\n\x1a\nthis is not really a png")
    drop_atomically(process.inbox, "notes.txt", b"plain text with no image in it")
    wait_for(lambda: (process.failed / "notes.txt").exists(), message="text file rejected")
    reason = (process.failed / "broken.png.reason.txt").read_text()
    assert "PNG" in reason or "not a recognised image format" in reason, reason
    assert "not a recognised image format" in (process.failed / "notes.txt.reason.txt").read_text()

    (label2, data2), = held_out_pngs(2)[1:]
    drop_atomically(process.inbox, f"{label2}/after.png", data2)
    wait_for(lambda: (process.processed / str(label2) / "after.png").exists(), message="daemon keeps going")
    assert process.metric("monitord_images_total", source="folder", outcome="rejected") == 2
    assert process.metric("monitord_images_total", source="folder", outcome="ok") == 2


def test_temporary_and_hidden_files_are_left_alone(daemon) -> None:
    process = daemon()
    (label, data), = held_out_pngs(1)
    for name in ("upload.png.part", "upload.png.tmp", ".hidden.png", "backup.png~"):
        drop_atomically(process.inbox, name, data)
    drop_atomically(process.inbox, "real.png", data)
    wait_for(lambda: (process.processed / "real.png").exists(), message="real file processed")
    time.sleep(1.0)
    left = sorted(p.name for p in process.inbox.iterdir())
    assert left == [".hidden.png", "backup.png~", "upload.png.part", "upload.png.tmp"]


def test_files_present_at_start_are_processed(tmp_path: Path, daemon) -> None:
    inbox = tmp_path / "inbox"
    for index, (label, data) in enumerate(held_out_pngs(10)):
        drop_atomically(inbox, f"{label}/early-{index}.png", data)
    process = daemon()
    wait_for(lambda: len(files_under(process.processed)) == 10, message="backlog processed")


def test_sigterm_with_a_batch_in_flight_loses_nothing(daemon) -> None:
    process = daemon('[pipeline]\nmax_batch_size = 64\nmax_batch_delay = 60\nadaptive_batching = false\n')
    digits = held_out_pngs(40)
    for index, (label, data) in enumerate(digits):
        drop_atomically(process.inbox, f"{label}/d{index}.png", data)
    # all 40 decoded and waiting in a batch that would wait a minute to fill
    wait_for(lambda: process.metric("monitord_queue_depth", stage="batching") == 40, message="a partial batch")
    assert files_under(process.processed) == []

    started = time.monotonic()
    assert process.terminate(timeout=60) == 0
    assert time.monotonic() - started < 30
    processed, left, failed = files_under(process.processed), files_under(process.inbox), files_under(process.failed)
    assert failed == []
    assert len(processed) + len(left) == 40
    assert len(processed) == 40  # the partial batch was finished, not dropped
    for path in processed:
        assert path.with_name(path.name + ".json").exists()


def test_a_file_over_max_file_bytes_fails_unread_and_the_rest_go_on(daemon) -> None:
    process = daemon("[folder]\nmax_file_bytes = 4000\n")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 4000
    drop_atomically(process.inbox, "big.png", buffer.getvalue())
    (label, small), = held_out_pngs(1)
    assert len(small) < 4000
    drop_atomically(process.inbox, f"{label}/small.png", small)
    wait_for(lambda: (process.failed / "big.png.reason.txt").exists(), message="the big file refused")
    reason = (process.failed / "big.png.reason.txt").read_text()
    assert "over the limit of 4000 (folder.max_file_bytes)" in reason
    wait_for(lambda: (process.processed / str(label) / "small.png").exists(), message="the small file processed")
    assert process.metric("monitord_images_total", source="folder", outcome="rejected") == 1


# -- the source in-process, with a pipeline stub: groups, failures inside a group, shutdown --


class StubPipeline:
    """Answers every item with a prediction (after ``delay`` seconds), or never (``answer=False``).

    ``slots`` is the room it reports: files beyond it are submitted one at a time with ``submit``.
    """

    accepting = True

    def __init__(self, slots: int = 1024, answer: bool = True) -> None:
        self.slots, self.answer = slots, answer
        self.seen: list[str] = []
        self.futures: list[asyncio.Future] = []

    def free_slots(self) -> int:
        return self.slots

    def _take(self, item: WorkItem) -> asyncio.Future:
        self.seen.append(item.id)
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        if self.answer:
            prediction = Prediction(item.id, item.source, "7", 7, 0.9, {"confidence": 0.9}, "now", item.label)
            asyncio.get_running_loop().call_later(0.01, future.set_result, prediction)
        return future

    def submit_nowait(self, items: list[WorkItem]) -> list[asyncio.Future]:
        return [self._take(item) for item in items]

    async def submit(self, item: WorkItem):
        return await self._take(item)

    def close(self) -> None:
        """What ``Pipeline.close`` does to items still inside: their futures are cancelled."""
        self.accepting = False
        for future in self.futures:
            future.cancel()


def in_process_source(tmp_path: Path, pipeline: StubPipeline, partition: Partition | None = None,
                      **folder: object) -> FolderSource:
    """A folder source in this process over ``tmp_path``'s inbox (``partition``: its share)."""
    settings = Settings(folder={"inbox": tmp_path / "inbox", "processed": tmp_path / "processed",
                                "failed": tmp_path / "failed", **folder}, state_dir=tmp_path / "state")
    source = FolderSource(SourceContext(name="folder", settings=settings, pipeline=pipeline,  # type: ignore[arg-type]
                                        metrics=Metrics(), app=None, partition=partition))  # type: ignore[arg-type]
    source.setup()
    return source


async def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_file_that_cannot_move_fails_alone_and_is_completed_later_without_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for index in range(30):
        drop_atomically(tmp_path / "inbox", f"{index % 3}/f{index:02}.png", b"image")
    real_move = folder_source_module.move
    blocked = {str(tmp_path / "inbox" / "1/f04.png")}

    def move(source, target) -> None:
        if source in blocked:
            raise PermissionError(13, "Permission denied", source)
        real_move(source, target)

    monkeypatch.setattr(folder_source_module, "move", move)
    pipeline = StubPipeline(slots=8)  # most files wait for room and go one by one
    source = in_process_source(tmp_path, pipeline)
    await source.start()
    try:
        await wait_until(lambda: len(files_under(tmp_path / "processed")) == 29)
        assert files_under(tmp_path / "inbox") == [tmp_path / "inbox" / "1/f04.png"]
        [entry] = source.ledger.unfinished()
        assert entry.relative == "1/f04.png" and entry.outcome == "ok"  # decided, not moved

        blocked.clear()
        source._scan_soon()  # what the periodic rescan does
        await wait_until(lambda: len(files_under(tmp_path / "processed")) == 30)
        assert (tmp_path / "processed" / "1/f04.png.json").exists()
        assert sorted(pipeline.seen) == sorted(f"{index % 3}/f{index:02}.png" for index in range(30))  # once each
        assert source.ledger.unfinished() == [] and source.ledger.totals() == {"ok": 30}
    finally:
        await source.stop()


async def test_claims_still_waiting_at_a_shutdown_deadline_are_released(tmp_path: Path) -> None:
    for index in range(12):
        drop_atomically(tmp_path / "inbox", f"f{index:02}.png", b"image")
    pipeline = StubPipeline(slots=5, answer=False)  # 5 submitted at once, 7 waiting for room
    source = in_process_source(tmp_path, pipeline)
    await source.start()
    await wait_until(lambda: len(pipeline.seen) == 12)
    assert len(source.ledger.unfinished()) == 12
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the daemon's pipeline.shutdown_timeout
            await source.stop()
    pipeline.close()
    await asyncio.sleep(0.05)
    # Not the files' fault: no attempt counted, every file still in the inbox for the next start.
    assert source.ledger.unfinished() == []
    assert len(files_under(tmp_path / "inbox")) == 12 and files_under(tmp_path / "processed") == []
    source.ledger.close()
