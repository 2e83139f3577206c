"""The monitor's loop over the stream: stand by, take over, apply, checkpoint.

While another monitor is active this one waits in ``acquire``. Once active it restores
the last checkpoint (the state *and* the position it was taken at), applies every entry
after that position in order, and every ``checkpoint_seconds`` commits its state with the
position of the last entry applied (less often when the state is so large that writing
it would take more than ``CHECKPOINT_SHARE`` of the monitor's time). A crash or a lost lease therefore costs re-applying
what came after the last checkpoint, never applying anything twice or skipping it: the
next monitor starts from the same pairing. Label verdicts go back to the inference process
that asked, and the detectors' state is published for ``GET /v1/detectors`` on every node.

Every transport, the in-process one included, is driven by this one loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable

from monitord.cancelling import cancel_and_wait
from monitord.monitor.monitor import Monitor
from monitord.transport.contract import Checkpoint, LeaseLost, MonitorLink, TransportUnavailable
from monitord.transport.entries import LabelBatch, Verdict

log = logging.getLogger("monitord.monitor")

#: Entries read at once: a reply of this many is applied, then its verdicts are sent.
READ_LIMIT = 64
#: Seconds between publications of the detectors' state for the other nodes.
STATUS_SECONDS = 1.0
#: Seconds to wait before trying again when the stream cannot be reached.
RETRY_SECONDS = 1.0
#: The most of its time the monitor spends checkpointing: a state that takes long to write
#: (the feedback join's waiting predictions: megabytes at 100,000) is written less often.
CHECKPOINT_SHARE = 0.05


class MonitorRunner:
    """Runs ``monitor`` from ``link`` until ``stop`` is set."""

    def __init__(self, monitor: Monitor, link: MonitorLink,
                 on_active: Callable[[bool, str], None] = lambda active, why: None,
                 on_restored: Callable[[], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.monitor = monitor
        self.link = link
        self._on_active = on_active
        #: Awaited after each restore, before the first entry is applied (the alerting
        #: starts its sinks there, with the episodes the checkpoint reopened).
        self._on_restored = on_restored
        self._clock = clock
        self.position = ""
        self.active = False
        self._unreachable = False
        #: Seconds the last checkpoint took (state encoded and committed).
        self.checkpoint_took = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._serve(stop)
            except LeaseLost as lost:
                self._set_active(False, f"standing by: another monitor took over ({lost})")
                log.warning("another monitor is active now (%s); this one stands by", lost)
            except TransportUnavailable as error:
                self._set_active(False, f"the stream cannot be reached: {error}")
                if not self._unreachable:  # once, not every second of an outage
                    log.warning("the stream cannot be reached (%s); trying again every %g s", error, RETRY_SECONDS)
                self._unreachable = True
                await _wait(stop, RETRY_SECONDS)

    async def _serve(self, stop: asyncio.Event) -> None:
        self._set_active(False, "standing by: waiting to become the active monitor")
        checkpoint = await _until(stop, self.link.acquire())
        if stop.is_set():
            return
        state = json.loads(checkpoint.state) if checkpoint is not None and checkpoint.state else None
        self.monitor.restore(state)
        if self._on_restored is not None:
            await self._on_restored()
        self.position = checkpoint.position if checkpoint is not None else ""
        if self._unreachable:
            self._unreachable = False
            log.info("the stream can be reached again")
        log.info("active monitor from %s", f"position {self.position}" if self.position else "the stream's start")
        self._set_active(True, "ready")
        last_checkpoint = last_status = self._clock()
        await self._publish_status()
        try:
            while not stop.is_set():
                entries = await _until(stop, self.link.read(self.position, READ_LIMIT))
                if entries:
                    replies = self._apply(entries)
                    self.link.applied(self.position)
                    for reply_to, verdicts in replies:
                        await self.link.reply(reply_to, verdicts)
                now = self._clock()
                if now - last_checkpoint >= self.checkpoint_interval():
                    await self.checkpoint()
                    last_checkpoint = self._clock()
                if now - last_status >= STATUS_SECONDS:
                    await self._publish_status()
                    last_status = now
        finally:
            if not stop.is_set():
                self.active = False
        await self.checkpoint()  # stopping: whoever comes next continues from here
        await self.link.release()  # ... at once, not once the lease expires

    def _apply(self, entries) -> list[tuple[str, list[Verdict]]]:
        replies = []
        for stream_entry in entries:
            self.position = stream_entry.position
            entry = stream_entry.entry
            if entry is None:
                log.error("skipped the unreadable entry %s: %s", stream_entry.position, stream_entry.error)
                continue
            try:
                verdicts = self.monitor.apply(entry)
            except Exception:  # a bug: skip the entry rather than stop monitoring everything
                log.exception("applying entry %s failed; skipped", stream_entry.position)
                continue
            if isinstance(entry, LabelBatch) and entry.reply_to:
                replies.append((entry.reply_to, verdicts))
        return replies

    def checkpoint_interval(self) -> float:
        """``checkpoint_seconds``, or longer so that checkpoints take at most ``CHECKPOINT_SHARE``
        of the time (a takeover then re-applies more entries, still each exactly once)."""
        return max(self.link.checkpoint_seconds, self.checkpoint_took / CHECKPOINT_SHARE)

    async def checkpoint(self) -> None:
        """Commit the state with the position of the last entry applied."""
        if not self.active:
            return
        started = self._clock()
        state = json.dumps(self.monitor.state(), separators=(",", ":")).encode("utf-8")
        await self.link.commit(Checkpoint(self.position, state))
        self.checkpoint_took = self._clock() - started

    async def _publish_status(self) -> None:
        try:
            await self.link.publish_status(self.monitor.status())
        except TransportUnavailable as error:
            log.debug("cannot publish the monitor's status: %s", error)

    def _set_active(self, active: bool, why: str) -> None:
        self.active = active
        self._on_active(active, why)


async def _until(stop: asyncio.Event, awaitable):
    """``await awaitable``, or None as soon as ``stop`` is set (the awaitable is cancelled)."""
    task = asyncio.ensure_future(awaitable)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task in done:
        return task.result()
    await cancel_and_wait([task])
    return None


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
