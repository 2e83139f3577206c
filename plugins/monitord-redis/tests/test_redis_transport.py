"""The Redis transport's primitives against a real redis-server: publishing and reading in
order, the lease and its fencing, takeover from the checkpoint, trimming, lag, replies,
the monitor's status, the model card, and what happens while Redis is away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import pytest

from monitord.items import Prediction
from monitord.metrics import Metrics
from monitord.plugins import load_plugins
from monitord.settings import Settings
from monitord.transport.contract import Checkpoint, LeaseLost, MonitorLink, Transport, TransportContext, \
    TransportUnavailable
from monitord.transport.entries import LabelBatch, ModelCard, PredictionBatch, Verdict

from monitord_redis import link as link_module
from monitord_redis.transport import RedisTransport
from redis_server import RedisServer

CARD = ModelCard("digits_cnn", ("a", "b"), ("confidence",), {"confidence": [0.9, 0.8, 0.95]})


def batch(start: int, count: int = 4, origin: str = "node-1") -> PredictionBatch:
    confidence = np.linspace(0.5, 0.9, count)
    predictions = [Prediction(f"p{start + i}", "http", "a", 0, float(confidence[i]), {"confidence": float(confidence[i])},
                              "2026-12-04T00:00:00.000+00:00") for i in range(count)]
    return PredictionBatch(predictions, {"confidence": confidence}, origin)


def settings(url: str, **bus: Any) -> Settings:
    return Settings(_env_file=None, bus={"url": url, "stream": "test", "lease_seconds": 1.0, **bus})


async def started(url: str, tmp_path: Path, instance: str = "127.0.0.1:8000", **bus: Any) -> RedisTransport:
    context = TransportContext(settings(url, **bus), tmp_path, instance, Metrics())
    transport = RedisTransport(context)
    await transport.start()
    return transport


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def read_all(link: MonitorLink, after: str, expected: int) -> list:
    """Read from ``after`` until ``expected`` entries came (reads may return fewer)."""
    entries: list = []
    deadline = time.monotonic() + 30
    while len(entries) < expected and time.monotonic() < deadline:
        entries += await link.read(entries[-1].position if entries else after, 64)
    return entries


async def crash(transport: RedisTransport) -> None:
    """The process dies: no release, no more renewals, its connections just go."""
    link = transport.monitor_link()
    await link.lease.close()
    for task in transport._tasks:
        task.cancel()
    await transport.client.aclose()


def ids(entries) -> list[str]:
    return [p.id for stream_entry in entries for p in stream_entry.entry.predictions]


def test_the_plugin_registers_the_redis_url_schemes() -> None:
    plugins = load_plugins()
    for scheme in ("redis", "rediss", "unix"):
        assert plugins.factory("transport", scheme) is RedisTransport
    with pytest.raises(ValueError, match="bus.url = 'http://127.0.0.1:6379/0' is not a Redis URL"):
        RedisTransport(TransportContext(settings("http://secret@127.0.0.1:6379/0"), Path("."), "i", Metrics()))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_redis_url_is_a_settings_error_before_anything_starts(workers: int) -> None:
    """With pipeline.workers too: else every process it starts would exit on it, again and again."""
    from monitord.preflight import check_configuration
    from monitord.settings import SettingsError

    bad = Settings(_env_file=None, bus={"url": "redis://127.0.0.1:99999/0"}, pipeline={"workers": workers})
    with pytest.raises(SettingsError, match="is not a Redis URL: Port out of range"):
        check_configuration(bad, load_plugins())


async def test_entries_are_read_in_order_strictly_after_a_position(redis_server: RedisServer, tmp_path: Path) -> None:
    first, second = await started(redis_server.url, tmp_path, "a:1"), await started(redis_server.url, tmp_path, "b:1")
    monitor = await started(redis_server.url, tmp_path, "m:1")
    try:
        assert isinstance(first, Transport) and isinstance(monitor.monitor_link(), MonitorLink)
        await first.publish(batch(0))
        await second.publish(LabelBatch([("p0", "a")], "", "b:1"))
        await second.publish(batch(4, origin="b:1"))
        link = monitor.monitor_link()
        assert await link.acquire() is None  # a fresh stream: no checkpoint
        entries = await read_all(link, "", 3)
        assert [type(e.entry).__name__ for e in entries] == ["PredictionBatch", "LabelBatch", "PredictionBatch"]
        assert [p.id for p in entries[0].entry.predictions] == ["p0", "p1", "p2", "p3"]
        assert entries[0].entry.predictions[1].to_json() == batch(0).predictions[1].to_json()
        assert np.array_equal(entries[2].entry.signals["confidence"], batch(4).signals["confidence"])
        assert entries[1].entry == LabelBatch([("p0", "a")], "", "b:1")
        positions = [e.position for e in entries]
        assert positions == sorted(positions, key=lambda p: tuple(map(int, p.split("-"))))
        assert [e.position for e in await link.read(positions[0], 64)] == positions[1:]
        assert await link.read(positions[-1], 64) == []  # nothing more: waits a little, then none
    finally:
        for transport in (first, second, monitor):
            await transport.close()


async def test_unreadable_entries_come_back_with_the_reason(redis_server: RedisServer, tmp_path: Path) -> None:
    monitor = await started(redis_server.url, tmp_path)
    try:
        client = monitor.client
        await client.xadd("test:entries", {b"entry": b"MDPB\x01"})
        await client.xadd("test:entries", {b"something": b"else"})
        await monitor.publish(batch(0))
        link = monitor.monitor_link()
        await link.acquire()
        bad, missing, good = await read_all(link, "", 3)
        assert bad.entry is None and "too short" in bad.error
        assert missing.entry is None and "no 'entry' field" in missing.error and "something" in missing.error
        assert isinstance(good.entry, PredictionBatch) and good.error == ""
    finally:
        await monitor.close()


async def test_one_active_monitor_and_a_fenced_commit(redis_server: RedisServer, tmp_path: Path) -> None:
    """A monitor that stopped renewing (paused, cut off) loses the lease to a standby; its
    commit then raises LeaseLost and writes nothing over the standby's checkpoint."""
    old, new = await started(redis_server.url, tmp_path, "old:1"), await started(redis_server.url, tmp_path, "new:1")
    try:
        old_link, new_link = old.monitor_link(), new.monitor_link()
        assert await old_link.acquire() is None
        await old_link.commit(Checkpoint("", b"old state 1"))
        standby = asyncio.create_task(new_link.acquire())
        await asyncio.sleep(2.5)  # more than two leases: renewed all along, so still the old one's
        assert not standby.done()

        await old_link.lease._stop_renewing()  # paused: no more renewals
        restored = await asyncio.wait_for(standby, 30)
        assert restored == Checkpoint("", b"old state 1")
        await new_link.commit(Checkpoint("", b"new state"))

        with pytest.raises(LeaseLost):  # it knows it lost the lease without asking ...
            await old_link.read("", 64)
        old_link.lease._valid_until = time.monotonic() + 60  # ... and even if its clock said otherwise,
        with pytest.raises(LeaseLost, match="another monitor's"):  # Redis refuses the write
            await old_link.commit(Checkpoint("", b"old state 2"))
        assert await new.client.hget("test:checkpoint", "state") == b"new state"
        await old_link.publish_status({"detectors": [{"name": "stale"}]})
        assert await new.monitor_status() is None  # the old one's status is not written either
        await new_link.publish_status({"detectors": [{"name": "fresh"}]})
        assert await old.monitor_status() == {"detectors": [{"name": "fresh"}]}
    finally:
        await old.close()
        await new.close()


async def test_a_release_hands_the_lease_over_at_once(redis_server: RedisServer, tmp_path: Path) -> None:
    first, second = await started(redis_server.url, tmp_path, "a:1", lease_seconds=600), \
        await started(redis_server.url, tmp_path, "b:1", lease_seconds=600)
    try:
        await first.monitor_link().acquire()
        standby = asyncio.create_task(second.monitor_link().acquire())
        await asyncio.sleep(0.5)
        assert not standby.done()
        await first.monitor_link().release()
        await asyncio.wait_for(standby, 30)  # long before the 600 s lease would have expired
        assert await second.client.get("test:lease") == second.monitor_link().lease.token.encode()
    finally:
        await first.close()
        await second.close()


async def test_a_takeover_applies_exactly_what_follows_the_checkpoint(redis_server: RedisServer,
                                                                     tmp_path: Path) -> None:
    """The dead monitor read ten entries and checkpointed after the fifth: whoever takes
    over gets the fifth's state and reads the sixth onwards (those the dead one read
    included) and what was published since, each once."""
    producer = await started(redis_server.url, tmp_path, "p:1")
    dead, standby = await started(redis_server.url, tmp_path, "m:1"), await started(redis_server.url, tmp_path, "m:2")
    try:
        for i in range(10):
            await producer.publish(batch(4 * i))
        dead_link = dead.monitor_link()
        await dead_link.acquire()
        entries = await read_all(dead_link, "", 10)
        assert len(entries) == 10
        dead_link.applied(entries[-1].position)
        await dead_link.commit(Checkpoint(entries[4].position, b"state after 5"))
        await crash(dead)
        for i in range(10, 13):
            await producer.publish(batch(4 * i))

        link = standby.monitor_link()
        checkpoint = await asyncio.wait_for(link.acquire(), 30)
        assert checkpoint == Checkpoint(entries[4].position, b"state after 5")
        rest = await read_all(link, checkpoint.position, 8)
        assert ids(rest) == [f"p{i}" for i in range(20, 52)]
        assert await link.read(rest[-1].position, 64) == []
    finally:
        for transport in (producer, standby):
            await transport.close()


async def test_trimming_keeps_every_entry_from_the_checkpoint_on(redis_server: RedisServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "TRIM_STEP", 100)  # several steps (one node of 100 entries each)
    producer = await started(redis_server.url, tmp_path)
    try:
        for i in range(1000):
            await producer.publish(LabelBatch([(f"p{i}", "a")]))
        link = producer.monitor_link()
        await link.acquire()
        entries = await read_all(link, "", 1000)
        checkpoint = entries[649].position
        link.applied(entries[-1].position)
        await link.commit(Checkpoint(checkpoint, b"s"))
        remaining = [position.decode() for position, _ in await producer.client.xrange("test:entries")]
        kept = [e.position for e in entries[649:]]
        assert remaining[-len(kept):] == kept  # nothing from the checkpoint on is gone
        assert len(remaining) < 1000 - 500  # and most of what lies below it is
        assert len(remaining) - len(kept) < 100  # at most one part-filled node below it remains
    finally:
        await producer.close()


async def test_lag_is_what_the_monitor_has_not_applied(redis_server: RedisServer, tmp_path: Path) -> None:
    producer, monitor = await started(redis_server.url, tmp_path, "p:1"), await started(redis_server.url, tmp_path)
    try:
        assert producer.lag() is None  # not polled yet

        async def lag_is(value: int) -> bool:
            return producer.lag() == value

        for i in range(5):
            await producer.publish(batch(4 * i))
        await eventually(lambda: lag_is(5), what="a lag of 5 before any monitor ran")
        link = monitor.monitor_link()
        await link.acquire()
        first = await link.read("", 3)
        link.applied(first[-1].position)
        await link.commit(Checkpoint(first[-1].position, b"s"))
        await link.read(first[-1].position, 1)  # reports what was applied before reading on
        await eventually(lambda: lag_is(2), what="a lag of 2 once 3 were applied")
        await link.commit(Checkpoint(first[-1].position, b"s"))  # trims: the lag does not change
        await producer.publish(batch(100))
        await eventually(lambda: lag_is(3), what="a lag of 3 after one more")
        await crash(monitor)

        successor = await started(redis_server.url, tmp_path, "m:2")
        try:
            link = successor.monitor_link()
            checkpoint = await asyncio.wait_for(link.acquire(), 30)
            rest = await read_all(link, checkpoint.position, 3)
            link.applied(rest[-1].position)
            await link.read(rest[-1].position, 64)
            await eventually(lambda: lag_is(0), what="no lag once the successor applied the rest")
        finally:
            await successor.close()
    finally:
        await producer.close()


async def test_verdicts_reach_the_process_that_published_the_labels(redis_server: RedisServer,
                                                                    tmp_path: Path) -> None:
    node_a, node_b = await started(redis_server.url, tmp_path, "a:1"), await started(redis_server.url, tmp_path, "b:1")
    monitor = await started(redis_server.url, tmp_path, "m:1")
    try:
        to_a, to_b = node_a.reply_address(), node_b.reply_address()
        waiting_a = asyncio.create_task(node_a.verdicts(to_a, 30))
        waiting_b = asyncio.create_task(node_b.verdicts(to_b, 30))
        link = monitor.monitor_link()
        await link.reply(to_b, [Verdict("p1", "joined", True, "a")])
        await link.reply(to_a, [Verdict("p2", "held", reason="waiting"), Verdict("p3", "unknown")])
        assert await waiting_b == [Verdict("p1", "joined", True, "a")]
        assert await waiting_a == [Verdict("p2", "held", reason="waiting"), Verdict("p3", "unknown")]
        assert await node_a.verdicts(node_a.reply_address(), 0.2) is None  # nobody answers: None in time
        await link.reply("elsewhere#1", [Verdict("p1", "joined")])  # not this stream's: not sent
    finally:
        for transport in (node_a, node_b, monitor):
            await transport.close()


async def test_the_model_card_is_waited_for(redis_server: RedisServer, tmp_path: Path) -> None:
    inference, monitor = await started(redis_server.url, tmp_path, "a:1"), await started(redis_server.url, tmp_path)
    try:
        waiting = asyncio.create_task(monitor.monitor_link().model_card())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await inference.publish_model(CARD)
        card = await asyncio.wait_for(waiting, 30)
        assert card.to_json() == CARD.to_json()
    finally:
        await inference.close()
        await monitor.close()


async def test_the_status_expires_once_no_monitor_publishes_it(redis_server: RedisServer, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "STATUS_TTL_SECONDS", 0.5)
    node, monitor = await started(redis_server.url, tmp_path, "a:1"), \
        await started(redis_server.url, tmp_path, lease_seconds=0.2)
    try:
        link = monitor.monitor_link()
        await link.acquire()
        await link.publish_status({"detectors": [{"name": "pht_confidence", "samples": 3, "statistic": float("nan")}]})
        status = await node.monitor_status()
        assert status["detectors"][0]["samples"] == 3

        async def gone() -> bool:
            return await node.monitor_status() is None

        await eventually(gone, what="the status to expire")
    finally:
        await node.close()
        await monitor.close()


async def test_unreachable_redis_says_where_and_what_to_check(tmp_path: Path) -> None:
    from daemon_process import free_port

    url = f"redis://user:secret@127.0.0.1:{free_port()}/0"
    transport = RedisTransport(TransportContext(settings(url), tmp_path, "a:1", Metrics()))
    with pytest.raises(TransportUnavailable) as raised:
        await transport.start()
    message = str(raised.value)
    assert "127.0.0.1" in message and "bus.url" in message and "secret" not in message and "user" not in message


async def test_an_outage_fails_fast_and_everything_resumes_after_it(redis_server: RedisServer,
                                                                    tmp_path: Path) -> None:
    producer = await started(redis_server.url, tmp_path, "p:1")
    monitor = await started(redis_server.url, tmp_path, "m:1", lease_seconds=60)
    try:
        await producer.publish(batch(0))
        link = monitor.monitor_link()
        await link.acquire()
        (first,) = await read_all(link, "", 1)
        link.applied(first.position)
        await link.commit(Checkpoint(first.position, b"s1"))
        assert await link.read(first.position, 64) == []  # reports what was applied
        producer.lag()
        await eventually(lambda: _is(producer.lag(), 0), what="the lag to be polled")

        redis_server.stop()
        started_at = time.monotonic()
        with pytest.raises(TransportUnavailable, match=f"127.0.0.1:{redis_server.port}"):
            await producer.publish(batch(4))
        with pytest.raises(TransportUnavailable):
            await link.read(first.position, 64)
        with pytest.raises(TransportUnavailable):
            await link.commit(Checkpoint(first.position, b"s2"))
        assert time.monotonic() - started_at < 20  # refused, not retried for long (generous on a busy machine)
        await eventually(lambda: _is(producer.lag(), None), what="the lag to become unknown")
        assert await producer.monitor_status() is None

        redis_server.start()  # same port, same append-only file
        await producer.publish(batch(4))  # the pool replaces the dead connections by itself
        assert await link.acquire() == Checkpoint(first.position, b"s1")  # still this one's lease
        (second,) = await read_all(link, first.position, 1)
        assert ids([second]) == ["p4", "p5", "p6", "p7"]
        await eventually(lambda: _is(producer.lag(), 1), what="the lag to be known again")
        to_producer = producer.reply_address()
        await eventually(lambda: _replied(link, producer, to_producer), what="the reply subscription to resume")
    finally:
        await producer.close()
        await monitor.close()


async def test_a_unix_socket_url_works_too(redis_server: RedisServer, tmp_path: Path) -> None:
    transport = await started(redis_server.unix_url, tmp_path)
    try:
        await transport.publish(batch(0))
        link = transport.monitor_link()
        await link.acquire()
        assert ids(await read_all(link, "", 1)) == ["p0", "p1", "p2", "p3"]
    finally:
        await transport.close()


async def _is(value: Any, expected: Any) -> bool:
    return value == expected


async def _replied(link, node: RedisTransport, address: str) -> bool:
    await link.reply(address, [Verdict("p1", "joined")])
    verdicts = await node.verdicts(address, 0.5)
    if verdicts is None:
        node._replies._waiting[address] = (asyncio.get_running_loop().create_future(), time.monotonic())
    return verdicts == [Verdict("p1", "joined")]


def a_monitor() -> "Monitor":
    """A monitor with one detector on the confidence (the card's reference)."""
    from monitord.detectors import DetectorStage
    from monitord.feedback import Feedback
    from monitord.monitor.monitor import Monitor
    from monitord.settings import DetectorSpec
    from monitord.snapshots import DetectorSnapshots

    metrics, plugins = Metrics(), load_plugins()
    stage = DetectorStage.build([DetectorSpec(type="pht", signal="confidence")],
                                lambda kind: plugins.factory("detector", kind), CARD.reference_signals, metrics)
    feedback = Feedback(Settings(_env_file=None).feedback, metrics)
    feedback.attach(CARD.class_names, stage)
    return Monitor(metrics, stage, feedback, DetectorSnapshots(stage, "fp"))


async def test_the_runner_over_redis_continues_exactly_where_a_stopped_monitor_left(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """The monitor loop every transport shares, over Redis: a monitor that stops checkpoints
    and gives the lease up at once (a standby need not wait for it to expire), and the next
    one continues from that checkpoint with every later entry, none twice."""
    from monitord.monitor.runner import MonitorRunner

    producer = await started(redis_server.url, tmp_path, "p:1")
    first, second = await started(redis_server.url, tmp_path, "m:1", lease_seconds=600), \
        await started(redis_server.url, tmp_path, "m:2", lease_seconds=600)
    try:
        for i in range(5):
            await producer.publish(batch(4 * i))
        before, after = a_monitor(), a_monitor()
        stop_first, stop_second = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(MonitorRunner(before, first.monitor_link()).run(stop_first))

        async def applied(mon, count: int) -> bool:
            return mon.detectors.states()[0]["samples"] == count

        await eventually(lambda: applied(before, 20), what="the first monitor to apply 20")
        standby = asyncio.create_task(MonitorRunner(after, second.monitor_link()).run(stop_second))
        await asyncio.sleep(0.5)
        assert await applied(after, 0)  # standing by
        stop_first.set()
        await asyncio.wait_for(running, 30)
        for i in range(5, 8):
            await producer.publish(batch(4 * i))
        # Long before the 600 s lease would expire: the lease was given up.
        await eventually(lambda: applied(after, 32), what="the standby to take over and apply the rest")
        assert after.applied == 3  # only the three entries after the checkpoint
        stop_second.set()
        await asyncio.wait_for(standby, 30)
        assert await producer.client.get("test:lease") is None
    finally:
        for transport in (producer, first, second):
            await transport.close()


async def test_a_loop_of_redis_commands_stops_every_time_it_is_cancelled(redis_server: RedisServer) -> None:
    """redis-py on Python 3.11 now and then completes a command although its task was
    cancelled meanwhile (the cancel is lost); the transport's loops end all the same."""
    from monitord.cancelling import cancel_and_wait
    from monitord_redis.connection import open_client

    client = open_client(redis_server.url)

    async def commands() -> None:
        while True:
            await client.get("test:nothing")

    try:
        for _ in range(200):
            task = asyncio.create_task(commands())
            await asyncio.sleep(0.001 * (_ % 7))
            assert await cancel_and_wait([task], timeout=30) == set()
    finally:
        await client.aclose()
