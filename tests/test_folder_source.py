"""The folder source end to end: the real daemon, real files, real metrics; then the
source in-process with a pipeline stub, for what a daemon cannot be made to do on cue."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import monitord.builtin.folder_source as folder_source_module
from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import drop_atomically, files_under, held_out_pngs
from gated_model import gated_model, gated_model_settings
from monitord.builtin.folder_ledger import Ledger
from monitord.builtin.folder_source import FolderSource
from monitord.items import Prediction, WorkItem
from monitord.pipeline import PipelineClosed
from monitord.metrics import Metrics
from monitord.settings import Settings
from monitord.sources import Partition, SourceContext
from monitord_testplugin import png


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


def test_sigterm_with_a_turn_in_flight_finishes_it_and_loses_nothing(tmp_path: Path) -> None:
    # The test plugin's brightness model, holding each image in preprocessing while a gate
    # file exists: SIGTERM comes while the folder thread's turn (every file, claimed at
    # once) is blocked in its first batch.
    env, gate, entered = gated_model(tmp_path)
    inbox = tmp_path / "inbox"
    for index in range(40):
        drop_atomically(inbox, f"{index % 2}/f{index:02}.png", png(250 if index % 2 else 5))
    settings = 'sources = ["folder"]\ndetectors = []\n' + gated_model_settings(gate, entered)
    process = DaemonProcess(tmp_path, free_port(), extra_settings=settings, env=env)
    try:
        process.start()
        wait_for(entered.exists, 60, message="the first file blocked in preprocessing")
        ledger = Ledger(process.state / "ledger.sqlite3")
        claimed = ledger.unfinished()
        ledger.close()
        assert len(claimed) == 40 and not any(entry.decided for entry in claimed)  # all claimed, none done
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.process.poll() is None  # finishing its turn, not dropping it
        gate.unlink()
        assert process.process.wait(timeout=60) == 0
    finally:
        gate.unlink(missing_ok=True)
        process.kill()
    assert files_under(tmp_path / "failed") == [] and files_under(inbox) == []
    processed = files_under(tmp_path / "processed")
    assert len(processed) == 40
    for path in processed:
        assert json.loads(path.with_name(path.name + ".json").read_text())["class"] == (
            "bright" if path.parent.name == "1" else "dark")


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
    """Answers every group with predictions (after ``delay`` seconds), or never (``answer=False``):
    then ``run`` waits until ``close``, as the real one does while its batch waits for the
    stream, and fails with ``PipelineClosed``."""

    def __init__(self, answer: bool = True, delay: float = 0.01) -> None:
        self.answer, self.delay = answer, delay
        self.seen: list[str] = []
        self.batches: list[int] = []
        self.closed = asyncio.Event()
        self.lagging: str | None = None
        #: How often the source asked whether the monitor lags (once a dispatch turn).
        self.lag_checks = 0

    async def run(self, items: list[WorkItem]) -> list[Prediction]:
        self.seen.extend(item.id for item in items)
        self.batches.append(len(items))
        if not self.answer:
            await self.closed.wait()
        if self.closed.is_set():
            raise PipelineClosed("the pipeline closed")
        await asyncio.sleep(self.delay)
        return [Prediction(item.id, item.source, "7", 7, 0.9, {"confidence": 0.9}, "now", item.label)
                for item in items]

    def overloaded(self) -> str | None:
        self.lag_checks += 1
        return self.lagging

    def close(self) -> None:
        self.closed.set()


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
    pipeline = StubPipeline()
    source = in_process_source(tmp_path, pipeline, max_in_flight=8)  # turns of 8 files
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
        assert max(pipeline.batches) <= 8  # folder.max_in_flight files at most in a turn
        assert source.ledger.unfinished() == [] and source.ledger.totals() == {"ok": 30}
    finally:
        await source.stop()


async def test_claims_still_waiting_at_a_shutdown_deadline_are_released(tmp_path: Path) -> None:
    for index in range(12):
        drop_atomically(tmp_path / "inbox", f"f{index:02}.png", b"image")
    pipeline = StubPipeline(answer=False)  # the first batch never recorded
    source = in_process_source(tmp_path, pipeline, max_in_flight=12)
    await source.start()
    await wait_until(lambda: len(pipeline.seen) == 12)
    assert len(source.ledger.unfinished()) == 12
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the daemon's pipeline.shutdown_timeout
            await source.stop()
    pipeline.close()  # what the daemon does next: the folder thread's batch fails, PipelineClosed
    await wait_until(lambda: source.ledger.unfinished() == [], timeout=5)
    # Not the files' fault: no attempt counted, every file still in the inbox for the next start.
    assert source.ledger.unfinished() == []
    assert len(files_under(tmp_path / "inbox")) == 12 and files_under(tmp_path / "processed") == []
    source.ledger.close()


async def test_files_wait_in_the_inbox_while_the_monitor_lags_then_go_through(tmp_path: Path) -> None:
    for index in range(5):
        drop_atomically(tmp_path / "inbox", f"f{index}.png", b"image")
    pipeline = StubPipeline()
    pipeline.lagging = "the monitor is 2,000 batches behind, more than bus.max_lag = 1000"
    source = in_process_source(tmp_path, pipeline)
    await source.start()
    try:
        await wait_until(lambda: pipeline.lag_checks >= 3)  # three turns held back, none taken meanwhile
        assert pipeline.seen == [] and len(files_under(tmp_path / "inbox")) == 5
        assert source.ledger.unfinished() == []  # nothing claimed either
        pipeline.lagging = None
        await wait_until(lambda: len(files_under(tmp_path / "processed", "*.png")) == 5)
        assert sorted(pipeline.seen) == [f"f{index}.png" for index in range(5)]
    finally:
        await source.stop()
