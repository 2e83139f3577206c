"""The monitor's end of the Redis stream.

Reading is a plain ``XREAD`` from a position: the entries strictly after it, in stream
order. No consumer group is needed, for the position that counts is the checkpoint's, not
what some consumer was last handed: a monitor that takes over reads from the checkpoint
and so sees every entry after it, those the previous monitor read and never checkpointed
included, exactly once.

A checkpoint is one Lua script (``scripts.COMMIT``): it writes the state and the position
only while this monitor holds the lease, else nothing, and the monitor hears ``LeaseLost``.
After a checkpoint the stream is trimmed below its position, a few hundred entries a call
(one large trim blocks Redis for milliseconds), never above it: whoever continues starts
at the checkpoint. Besides, the monitor writes how many entries the stream had received up
to the last one applied (``counts``), which is how inference knows how far behind it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from monitord.transport.contract import Checkpoint, LeaseLost, StreamEntry, TransportUnavailable
from monitord.transport.entries import EntryFormatError, ModelCard, Verdict, decode_entry

from . import scripts
from .connection import reaching
from .counts import CountsReader
from .keys import ENTRY_FIELD
from .lease import Lease
from .replies import reply_channel, reply_message

if TYPE_CHECKING:
    from .transport import RedisTransport

log = logging.getLogger("monitord.redis")

#: Milliseconds ``read`` blocks when no entry is there (the runner checkpoints and
#: publishes the detectors' state on time although nothing arrives).
READ_BLOCK_MILLISECONDS = 250
#: Seconds between looks for the lease while another monitor holds it.
STANDBY_POLL_SECONDS = 0.25
#: Seconds between looks for the model card before one was published.
CARD_POLL_SECONDS = 0.5
#: Entries one trimming call may remove at most; a checkpoint trims in such steps. Redis
#: trims whole nodes of the stream (``stream-node-max-entries``, 100 unless changed), so a
#: step must hold at least one.
TRIM_STEP = 1000
#: Trimming calls after one checkpoint at most (the next checkpoint goes on from there).
TRIM_CALLS = 50
#: Seconds the published detectors' state lives unless published again: a node shows the
#: last one this long after the monitor stopped publishing, then answers 503.
STATUS_TTL_SECONDS = 15.0


class RedisMonitorLink:
    def __init__(self, transport: RedisTransport) -> None:
        bus = transport.context.settings.bus
        self.checkpoint_seconds = bus.checkpoint_seconds
        self._keys = transport.keys
        self._where = transport.where
        self._instance = transport.context.instance
        client = transport.client
        self._client = client
        self.lease = Lease(client, self._keys.lease, transport.node, bus.lease_seconds, self._where)
        self._commit = client.register_script(scripts.COMMIT)
        self._set_if_holder = client.register_script(scripts.SET_IF_HOLDER)
        self._counts = CountsReader(client, self._keys)
        self._status_ttl_ms = int(max(STATUS_TTL_SECONDS, 2 * bus.lease_seconds) * 1000)
        # (position, entries added up to it) of the last entry read, and of the last applied;
        # the count is None where it cannot be known (lag then falls back to the length).
        self._read: tuple[str, int | None] = ("", None)
        self._applied: tuple[str, int | None] = ("", None)
        self._reported: int | None = None

    # -- the model -------------------------------------------------------------------------

    async def model_card(self) -> ModelCard:
        """Wait for an inference process to publish its card (across Redis outages)."""
        complained = ""
        while True:
            try:
                with reaching(self._where):
                    data = await self._client.get(self._keys.model)
                if data is not None:
                    return ModelCard.from_json(json.loads(data))
            except (TransportUnavailable, EntryFormatError, ValueError) as error:
                if str(error) != complained:
                    log.warning("cannot read the model card in %s yet: %s", self._keys.model, error)
                    complained = str(error)
            await asyncio.sleep(CARD_POLL_SECONDS)

    # -- taking over -----------------------------------------------------------------------

    async def acquire(self) -> Checkpoint | None:
        while not await self.lease.try_take():
            await asyncio.sleep(STANDBY_POLL_SECONDS)
        with reaching(self._where):
            saved = await self._client.hgetall(self._keys.checkpoint)
        if saved:
            checkpoint = Checkpoint(saved.get(b"position", b"").decode(), saved.get(b"state", b""))
            count = saved.get(b"count", b"")
            self._read = (checkpoint.position, int(count) if count else None)
        else:
            checkpoint = None
            with reaching(self._where):
                counts = await self._counts.read()
            self._read = ("", counts.before_first)
        self._applied = self._read
        self._reported = None
        log.info("holding the monitor's lease %s (%s)", self._keys.lease, self.lease.token)
        return checkpoint

    # -- reading ---------------------------------------------------------------------------

    async def read(self, after: str, limit: int) -> Sequence[StreamEntry]:
        self.lease.check()
        await self._report_applied()
        with reaching(self._where):
            reply = await self._client.xread({self._keys.stream: after or "0-0"}, count=limit,
                                             block=READ_BLOCK_MILLISECONDS)
        records = reply[0][1] if reply else []
        position, count = self._read
        if position != after:  # not where the last read ended: the counts are unknown from here
            count = None
        entries = []
        for raw_position, fields in records:
            position = raw_position.decode()
            count = None if count is None else count + 1
            entries.append(_stream_entry(position, fields))
        if entries:
            self._read = (position, count)
        elif self._read[0] != after:
            self._read = (after, None)
        return entries

    def applied(self, position: str) -> None:
        if position == self._read[0]:
            self._applied = self._read
        else:
            self._applied = (position, None)

    async def _report_applied(self) -> None:
        count = self._applied[1]
        if count is None or count == self._reported:
            return
        with reaching(self._where):
            stored = await self._set_if_holder(keys=[self._keys.lease, self._keys.applied],
                                               args=[self.lease.token, count, 0])
        if not stored:
            raise self._lost()
        self._reported = count

    # -- checkpoints -----------------------------------------------------------------------

    async def commit(self, checkpoint: Checkpoint) -> None:
        position, count = self._applied
        if position != checkpoint.position:
            count = None
        saved_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with reaching(self._where):
            stored = await self._commit(
                keys=[self._keys.lease, self._keys.checkpoint],
                args=[self.lease.token, checkpoint.position, checkpoint.state, "" if count is None else count,
                      self._instance, saved_at],
            )
        if not stored:
            raise self._lost("this checkpoint was not written")
        if checkpoint.position:
            await self._trim_below(checkpoint.position)

    async def _trim_below(self, position: str) -> None:
        """Remove entries before ``position``, a step at a time; a failure waits for the next
        checkpoint (nothing is lost by trimming late)."""
        try:
            for _ in range(TRIM_CALLS):
                with reaching(self._where):
                    removed = await self._client.xtrim(self._keys.stream, minid=position, approximate=True,
                                                       limit=TRIM_STEP)
                if not removed:
                    return
        except TransportUnavailable as error:
            log.debug("trimming the stream below %s failed: %s", position, error)

    # -- answers ---------------------------------------------------------------------------

    async def reply(self, reply_to: str, verdicts: Sequence[Verdict]) -> None:
        channel = reply_channel(reply_to)
        if not channel.startswith(self._keys.replies_prefix):
            log.warning("a label batch asked for its verdicts at %r, which is not a reply address of "
                        "this stream; none sent", reply_to)
            return
        try:
            with reaching(self._where):
                await self._client.publish(channel, reply_message(reply_to, verdicts))
        except TransportUnavailable as error:  # best effort: the labels are joined all the same
            log.debug("could not send the verdicts for %s: %s", reply_to, error)

    async def publish_status(self, status: dict[str, Any]) -> None:
        data = json.dumps(status, separators=(",", ":"))
        with reaching(self._where):
            stored = await self._set_if_holder(keys=[self._keys.lease, self._keys.status],
                                               args=[self.lease.token, data, self._status_ttl_ms])
        if not stored:
            self._lost()  # the next read stops applying

    async def release(self) -> None:
        await self.lease.release()

    def _lost(self, what: str = "") -> LeaseLost:
        """Redis refused a fenced write: the lease is not this monitor's any more."""
        reason = f"the lease {self._keys.lease} is another monitor's" + (f"; {what}" if what else "")
        self.lease.lost(reason)
        return LeaseLost(reason)

    async def close(self) -> None:
        await self.lease.release()


def _stream_entry(position: str, fields: dict[bytes, bytes]) -> StreamEntry:
    data = fields.get(ENTRY_FIELD)
    if data is None:
        return StreamEntry(position, None, f"no {ENTRY_FIELD.decode()!r} field (fields: "
                                           f"{sorted(field.decode(errors='replace') for field in fields)}); "
                                           "not written by monitord")
    try:
        return StreamEntry(position, decode_entry(data))
    except EntryFormatError as error:
        return StreamEntry(position, None, str(error))
    except Exception as error:  # whatever the bytes are, they must not stop the monitor
        return StreamEntry(position, None, f"{type(error).__name__}: {error}")
