"""The in-process transport (``local``): both roles in one process, nothing to run beside it.

``publish`` puts the entry on a queue the monitor's loop reads and returns once the
monitor applied it, so a client is answered, or a file moved, only after its batch reached
the detectors: a label sent right after an answer always finds its prediction, as if the
two roles were one. The lag is the number of entries published and not yet applied; the
queue holds at most ``bus.max_lag`` of them (more publishers wait for room).

Checkpoints are files in the state folder, as they always were: the detectors' snapshot
(``detectors.json``, unless ``snapshots.enabled`` is off), written every
``snapshots.interval_seconds`` and at shutdown, and
the open alert episodes (``alerts.json``), which the alert dispatcher writes itself
whenever they change. Nothing else survives a restart (the queue is in memory, and
nothing answered is in it); the position is a count of entries applied since the start.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Sequence

from monitord.alerting.dispatcher import read_open_alerts
from monitord.snapshots import FILE_NAME, read_snapshot_file, write_snapshot_file
from monitord.state_files import set_aside
from monitord.transport.contract import Checkpoint, StreamEntry, TransportContext
from monitord.transport.entries import Entry, ModelCard, Verdict


#: Seconds ``read`` waits for an entry before it returns none (the loop then checkpoints
#: and publishes the detectors' state on time although nothing arrives).
READ_WAIT_SECONDS = 0.25


class LocalTransport:
    name = "local"

    def __init__(self, context: TransportContext) -> None:
        self.context = context
        settings = context.settings
        self._queue: asyncio.Queue[tuple[int, Entry]] = asyncio.Queue(settings.bus.max_lag)
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._sequence = itertools.count(1)
        self._replies: dict[str, asyncio.Future[list[Verdict]]] = {}
        self._reply_numbers = itertools.count(1)
        self._card: asyncio.Future[ModelCard] | None = None
        self._status: dict[str, Any] | None = None
        self._link = LocalLink(self, settings.snapshots.interval_seconds)

    async def start(self) -> None:
        self._card = asyncio.get_running_loop().create_future()

    async def close(self) -> None:
        for future in list(self._waiting.values()) + list(self._replies.values()):
            if not future.done():
                future.cancel()

    # -- inference side ----------------------------------------------------------------

    async def publish(self, entry: Entry) -> None:
        applied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sequence = next(self._sequence)
        self._waiting[sequence] = applied
        await self._queue.put((sequence, entry))
        try:
            await applied
        finally:
            self._waiting.pop(sequence, None)

    async def publish_model(self, card: ModelCard) -> None:
        assert self._card is not None, "start() first"
        if not self._card.done():
            self._card.set_result(card)

    def lag(self) -> int | None:
        return len(self._waiting)  # those waiting for room in the queue too

    def reply_address(self) -> str:
        address = f"local:{next(self._reply_numbers)}"
        self._replies[address] = asyncio.get_running_loop().create_future()
        return address

    async def verdicts(self, reply_to: str, timeout: float) -> list[Verdict] | None:
        future = self._replies.get(reply_to)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return None
        finally:
            self._replies.pop(reply_to, None)

    async def monitor_status(self) -> dict[str, Any] | None:
        return self._status

    def monitor_link(self) -> LocalLink:
        return self._link


class LocalLink:
    """The monitor's end of the in-process queue."""

    def __init__(self, transport: LocalTransport, checkpoint_seconds: float) -> None:
        self._transport = transport
        self.checkpoint_seconds = checkpoint_seconds
        state_dir = transport.context.state_dir
        self._snapshot_path = state_dir / FILE_NAME
        self._state_dir = state_dir
        self._keep_snapshot = transport.context.settings.snapshots.enabled

    async def model_card(self) -> ModelCard:
        assert self._transport._card is not None, "start() first"
        return await asyncio.shield(self._transport._card)

    async def acquire(self) -> Checkpoint | None:
        """The files an earlier run left: the detectors' snapshot and the open episodes."""
        detectors = await asyncio.to_thread(read_snapshot_file, self._snapshot_path) if self._keep_snapshot else None
        alerts = await asyncio.to_thread(read_open_alerts, self._state_dir)
        if detectors is None and not alerts:
            return None
        state = {"version": 1, "detectors": detectors, "alerts": alerts, "feedback": None}
        return Checkpoint("0", json.dumps(state).encode("utf-8"))

    async def read(self, after: str, limit: int) -> Sequence[StreamEntry]:
        queue = self._transport._queue
        entries = []
        try:
            sequence, entry = await asyncio.wait_for(queue.get(), READ_WAIT_SECONDS)
        except TimeoutError:
            return []
        entries.append(StreamEntry(str(sequence), entry))
        while len(entries) < limit and not queue.empty():
            sequence, entry = queue.get_nowait()
            entries.append(StreamEntry(str(sequence), entry))
        return entries

    def applied(self, position: str) -> None:
        done = int(position)
        for sequence, future in list(self._transport._waiting.items()):
            if sequence <= done and not future.done():
                future.set_result(None)

    async def commit(self, checkpoint: Checkpoint) -> None:
        if self._keep_snapshot:
            await asyncio.to_thread(self._write_snapshot, checkpoint.state)

    def _write_snapshot(self, state: bytes) -> None:
        """Only the detectors' part is kept (the alert dispatcher writes its own file)."""
        detectors = json.loads(state).get("detectors")
        if detectors is not None:
            write_snapshot_file(self._snapshot_path, detectors)

    def set_aside_snapshot(self) -> None:
        """The snapshot did not fit (another model, other detectors): keep it for inspection."""
        if self._snapshot_path.exists():
            set_aside(self._snapshot_path, "incompatible")

    async def reply(self, reply_to: str, verdicts: Sequence[Verdict]) -> None:
        future = self._transport._replies.get(reply_to)
        if future is not None and not future.done():
            future.set_result(list(verdicts))

    async def publish_status(self, status: dict[str, Any]) -> None:
        self._transport._status = status

    async def release(self) -> None:
        pass
