"""The monitor role in-process: entries applied in order, exactly once, checkpointed with
their position, restored by whoever continues, and verdicts sent back; driven by the one
runner every transport shares, here over the in-process transport."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.items import Prediction
from monitord.metrics import Metrics
from monitord.monitor.monitor import Monitor
from monitord.monitor.runner import MonitorRunner
from monitord.plugins import load_plugins
from monitord.settings import DetectorSpec, Settings
from monitord.snapshots import DetectorSnapshots
from monitord.transport.contract import Checkpoint, LeaseLost, StreamEntry, TransportContext
from monitord.transport.entries import LabelBatch, ModelCard, PredictionBatch, Verdict, decode_entry
from monitord.transport.local import LocalTransport

REFERENCE = {"confidence": np.random.default_rng(0).normal(0.9, 0.05, 400).tolist()}
CARD = ModelCard("digits_cnn", ("a", "b"), ("confidence",), REFERENCE)


def batch(start: int, count: int, confidence: float = 0.9, label: str | None = None) -> PredictionBatch:
    values = np.full(count, confidence)
    predictions = [Prediction(f"p{start + i}", "t", "a", 0, confidence, {"confidence": confidence},
                              "2026-12-04T00:00:00.000+00:00", label) for i in range(count)]
    return PredictionBatch(predictions, {"confidence": values}, "node-1")


def monitor(metrics: Metrics | None = None) -> Monitor:
    metrics = metrics or Metrics()
    plugins = load_plugins()
    stage = DetectorStage.build([DetectorSpec(type="pht", signal="confidence"), DetectorSpec(type="hddm_a", signal="error")],
                                lambda kind: plugins.factory("detector", kind), REFERENCE, metrics)
    feedback = Feedback(Settings().feedback, metrics)
    feedback.attach(CARD.class_names, stage)
    return Monitor(metrics, stage, feedback, DetectorSnapshots(stage, "fp"))


def samples(mon: Monitor) -> dict[str, int]:
    return {state["name"]: state["samples"] for state in mon.detectors.states()}


def test_entries_survive_their_binary_form() -> None:
    original = batch(0, 3, label="b")
    decoded = decode_entry(original.encode())
    assert isinstance(decoded, PredictionBatch) and decoded.origin == "node-1"
    assert [p.to_json() for p in decoded.predictions] == [p.to_json() for p in original.predictions]
    assert np.array_equal(decoded.signals["confidence"], original.signals["confidence"])
    labels = decode_entry(LabelBatch([("p1", "a"), ("p2", "b")], "node-2:7", "node-2").encode())
    assert labels == LabelBatch([("p1", "a"), ("p2", "b")], "node-2:7", "node-2")
    with pytest.raises(ValueError, match="not a monitord entry"):
        decode_entry(b"garbage")


def test_applying_feeds_the_detectors_the_join_and_the_prediction_metrics() -> None:
    metrics = Metrics()
    mon = monitor(metrics)
    assert mon.apply(batch(0, 5)) == []
    assert samples(mon) == {"pht_confidence": 5, "hddm_a_error": 0}
    verdicts = mon.apply(LabelBatch([("p0", "a"), ("p1", "b"), ("p0", "a")]))
    assert [v.outcome for v in verdicts] == ["joined", "joined", "duplicate"]
    assert [v.correct for v in verdicts[:2]] == [True, False]
    assert samples(mon)["hddm_a_error"] == 2
    assert metrics.registry.get_sample_value("monitord_predictions_total", {"class": "a"}) == 5
    assert metrics.registry.get_sample_value("monitord_prediction_confidence_count") == 5


def test_a_checkpoint_restored_elsewhere_continues_exactly() -> None:
    uninterrupted, first = monitor(), monitor()
    for mon in (uninterrupted, first):
        mon.apply(batch(0, 200))
        mon.apply(LabelBatch([("p3", "b")]))
    state = json.loads(json.dumps(first.state()))
    second = monitor()
    second.restore(state)
    assert samples(second) == samples(uninterrupted)
    for mon in (uninterrupted, second):  # a drift after the checkpoint: found at the same sample
        mon.apply(batch(200, 300, confidence=0.5))
        mon.apply(LabelBatch([("p4", "b"), ("p3", "b")]))
    assert mon.detectors.states() == uninterrupted.detectors.states()
    assert [v.outcome for v in second.apply(LabelBatch([("p5", "a")]))] == ["joined"]  # pending came along


class ScriptedLink:
    """A MonitorLink that serves a list of entries and records commits; ``lose_lease_at`` makes
    one commit fail as if another monitor took over."""

    checkpoint_seconds = 0.0

    def __init__(self, entries: list, checkpoint: Checkpoint | None = None, lose_lease_at: int | None = None) -> None:
        self.entries = [StreamEntry(str(index + 1), entry) for index, entry in enumerate(entries)]
        self.checkpoint = checkpoint
        self.commits: list[Checkpoint] = []
        self.replies: list[tuple[str, list[Verdict]]] = []
        self.acquired = 0
        self.lose_lease_at = lose_lease_at
        self.done = asyncio.Event()

    async def model_card(self) -> ModelCard:
        return CARD

    async def acquire(self) -> Checkpoint | None:
        self.acquired += 1
        return self.checkpoint

    async def read(self, after: str, limit: int):
        later = [entry for entry in self.entries if int(entry.position) > int(after or 0)][:limit]
        if not later:
            self.done.set()
            await asyncio.sleep(0.01)
        return later

    def applied(self, position: str) -> None:
        pass

    async def commit(self, checkpoint: Checkpoint) -> None:
        if self.lose_lease_at is not None and int(checkpoint.position or 0) >= self.lose_lease_at:
            self.lose_lease_at = None
            raise LeaseLost("monitor-2 holds the lease")
        self.commits.append(checkpoint)
        self.checkpoint = checkpoint

    async def reply(self, reply_to: str, verdicts) -> None:
        self.replies.append((reply_to, list(verdicts)))

    async def publish_status(self, status: dict) -> None:
        pass

    async def release(self) -> None:
        pass


async def until(condition, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def until_async(condition, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def run_until_done(runner: MonitorRunner, link: ScriptedLink) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(link.done.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_the_runner_applies_after_the_checkpoint_and_commits_state_with_position() -> None:
    entries = [batch(0, 10), LabelBatch([("p1", "a")], "node-1:1"), batch(10, 10), batch(20, 10)]
    # A checkpoint taken after the first two entries: only the last two are applied again.
    before = monitor()
    before.apply(entries[0])
    before.apply(entries[1])
    link = ScriptedLink(entries, Checkpoint("2", json.dumps(before.state()).encode()))
    mon = monitor()
    await run_until_done(MonitorRunner(mon, link), link)
    assert samples(mon) == {"pht_confidence": 30, "hddm_a_error": 1}  # none twice, none lost
    assert link.commits[-1].position == "4"
    assert json.loads(link.commits[-1].state)["detectors"]["detectors"]["pht_confidence"]["state"]["samples"] == 30


async def test_a_lost_lease_stands_by_and_the_next_turn_restores_the_checkpoint_not_memory() -> None:
    entries = [batch(0, 10), batch(10, 10), batch(20, 10)]
    link = ScriptedLink(entries, lose_lease_at=3)
    mon = monitor()
    states: list[tuple[bool, str]] = []
    await run_until_done(MonitorRunner(mon, link, lambda active, why: states.append((active, why))), link)
    assert link.acquired == 2  # stood by, then took over again
    assert any(not active and "another monitor" in why for active, why in states)
    # The lost turn's applied-but-uncommitted entries were not kept: 30, not 30 + what was lost.
    assert samples(mon)["pht_confidence"] == 30 and link.commits[-1].position == "3"


async def test_verdicts_go_back_to_whoever_asked() -> None:
    entries = [batch(0, 3), LabelBatch([("p0", "b"), ("zz", "a")], "node-2:9")]
    link = ScriptedLink(entries)
    await run_until_done(MonitorRunner(monitor(), link), link)
    ((reply_to, verdicts),) = link.replies
    assert reply_to == "node-2:9" and [v.outcome for v in verdicts] == ["joined", "held"]


async def test_the_in_process_transport_answers_once_the_monitor_applied_and_keeps_detector_files(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, snapshots={"interval_seconds": 0.2})
    transport = LocalTransport(TransportContext(settings, tmp_path, "node-1", Metrics()))
    await transport.start()
    mon = monitor()
    stop = asyncio.Event()
    runner = asyncio.create_task(MonitorRunner(mon, transport.monitor_link()).run(stop))
    try:
        await transport.publish(batch(0, 7))
        assert samples(mon)["pht_confidence"] == 7  # applied before publish returned
        reply_to = transport.reply_address()
        await transport.publish(LabelBatch([("p2", "a")], reply_to))
        verdicts = await transport.verdicts(reply_to, 5)
        assert [v.outcome for v in verdicts] == ["joined"]
        assert transport.lag() == 0
        # Every snapshots.interval_seconds a checkpoint file; every second the published state.
        await until(lambda: (tmp_path / "detectors.json").exists())
        saved = json.loads((tmp_path / "detectors.json").read_text())
        assert saved["detectors"]["pht_confidence"]["state"]["samples"] == 7
        status: list = []

        async def published() -> bool:
            status[:] = [await transport.monitor_status()]
            return status[0] is not None and status[0]["detectors"][0]["samples"] == 7

        await until_async(published)
    finally:
        stop.set()
        await runner
        await transport.close()


async def test_the_in_process_lag_counts_every_batch_not_yet_applied_so_max_lag_can_refuse_work(
        tmp_path: Path) -> None:
    """The queue holds bus.max_lag entries; publishers beyond wait for room, and count as lag."""
    settings = Settings(_env_file=None, state_dir=tmp_path, bus={"max_lag": 2})
    transport = LocalTransport(TransportContext(settings, tmp_path, "node-1", Metrics()))
    await transport.start()
    publishing = [asyncio.create_task(transport.publish(batch(4 * i, 4))) for i in range(4)]  # no monitor reads
    try:
        await until(lambda: transport.lag() == 4)
        assert transport.lag() > settings.bus.max_lag  # what Pipeline.overloaded compares
    finally:
        for task in publishing:  # as the pipeline's close does
            task.cancel()
        await asyncio.gather(*publishing, return_exceptions=True)
        await transport.close()


async def test_with_snapshots_disabled_the_in_process_transport_neither_reads_nor_writes_detector_files(
        tmp_path: Path) -> None:
    earlier = monitor()
    earlier.apply(batch(0, 5))
    (tmp_path / "detectors.json").write_text(json.dumps(earlier.state()["detectors"]))
    settings = Settings(_env_file=None, state_dir=tmp_path, snapshots={"enabled": False})
    link = LocalTransport(TransportContext(settings, tmp_path, "node-1", Metrics())).monitor_link()
    assert await link.acquire() is None  # the file an earlier run left is not restored
    (tmp_path / "detectors.json").unlink()
    await link.commit(Checkpoint("3", json.dumps(monitor().state()).encode()))
    assert not (tmp_path / "detectors.json").exists()


async def test_a_state_that_takes_long_to_write_is_checkpointed_less_often() -> None:
    """With checkpoints taking 0.5 s of a (simulated) clock, one follows the last 10 s later
    (a twentieth of the time), not every second as bus.checkpoint_seconds says."""
    now = [0.0]

    class SlowLink(ScriptedLink):
        checkpoint_seconds = 1.0

        async def read(self, after: str, limit: int):
            now[0] += 0.25  # a quarter of a second passes with each read
            if now[0] >= 30:
                self.done.set()
            await asyncio.sleep(0)
            return []

        async def commit(self, checkpoint: Checkpoint) -> None:
            now[0] += 0.5
            await super().commit(checkpoint)

    link = SlowLink([])
    runner = MonitorRunner(monitor(), link, clock=lambda: now[0])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(link.done.wait(), 10)
    assert runner.checkpoint_interval() == 10.0
    # Over 30 simulated seconds: 30 with checkpoints every second; 3 or 4 at a twentieth.
    assert 2 <= len(link.commits) <= 4, len(link.commits)
    stop.set()
    await asyncio.wait_for(task, 10)
