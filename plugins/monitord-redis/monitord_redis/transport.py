"""``RedisTransport``: the stream between inference and monitoring as Redis Streams.

Any number of inference processes, on any hosts, publish one stream entry per batch
(``XADD``, answered once Redis acknowledged it); one monitor at a time holds the lease and
applies the entries (``link.RedisMonitorLink``); the others stand by. How everything is
laid out in Redis, and why each batch is applied exactly once, is in the README.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from typing import Any

import redis.asyncio

from monitord.cancelling import cancel_and_wait
from monitord.transport.contract import TransportContext, TransportUnavailable
from monitord.transport.entries import Entry, ModelCard, Verdict

from .connection import check_url, open_client, reaching, shown_url
from .counts import CountsReader
from .keys import ENTRY_FIELD, StreamKeys
from .link import RedisMonitorLink
from .replies import Replies

log = logging.getLogger("monitord.redis")

#: The oldest Redis this transport works with (``XINFO STREAM``'s ``entries-added``).
MINIMUM_VERSION = (7, 0)
#: Seconds between looks at how far the monitor is behind (``lag``).
LAG_POLL_SECONDS = 0.25
#: Seconds between checks that the model card is still in Redis (rewritten if not).
CARD_CHECK_SECONDS = 10.0


class RedisTransport:
    name = "redis"

    def __init__(self, context: TransportContext) -> None:
        bus = context.settings.bus
        assert bus.url, "the redis transport needs bus.url"
        check_url(bus.url)
        self.context = context
        self.url = bus.url
        self.where = shown_url(bus.url)
        self.keys = StreamKeys(bus.stream)
        #: This process in the stream: its reply channel and, as a monitor, its lease token.
        self.node = f"{context.instance}/{os.getpid()}/{secrets.token_hex(4)}"
        self._client: redis.asyncio.Redis | None = None
        self._replies: Replies | None = None
        self._link: RedisMonitorLink | None = None
        self._lag: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watching_lag = False

    @property
    def client(self) -> redis.asyncio.Redis:
        assert self._client is not None, "start() first"
        return self._client

    async def start(self) -> None:
        self._client = open_client(self.url)
        try:
            with reaching(self.where):
                server = await self._client.info("server")
                persistence = await self._client.info("persistence")
                memory = await self._client.info("memory")
            version = tuple(int(part) for part in str(server.get("redis_version", "0")).split(".")[:2])
            if version < MINIMUM_VERSION:
                raise TransportUnavailable(
                    f"Redis at {self.where} is version {server.get('redis_version')}; the monitord stream needs "
                    f"Redis {'.'.join(map(str, MINIMUM_VERSION))} or later")
            if not int(persistence.get("aof_enabled", 0)):
                log.warning("Redis at %s keeps no append-only file: if it restarts, the batches not yet applied, "
                            "the checkpoint and the alert episodes in it are lost; set appendonly yes "
                            "(appendfsync everysec loses about the last second at most)", self.where)
            policy = str(memory.get("maxmemory_policy", "noeviction"))
            if int(memory.get("maxmemory", 0)) and policy != "noeviction":
                log.warning("Redis at %s evicts keys when full (maxmemory-policy %s): it may drop the stream, the "
                            "checkpoint or the lease; set maxmemory-policy noeviction (a full Redis then refuses "
                            "new batches, and inference answers 503)", self.where, policy)
            self._replies = Replies(self._client, self.keys.replies(self.node), self.where)
            await self._replies.start()
        except BaseException:
            await self._client.aclose()
            self._client = None
            raise
        log.info("stream %s on Redis at %s", self.keys.stream, self.where)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._link is not None:
            await self._link.close()
        if self._replies is not None:
            await self._replies.close()
        if self._client is not None:
            await self._client.aclose()

    # -- inference side ----------------------------------------------------------------

    async def publish(self, entry: Entry) -> None:
        data = entry.encode()
        with reaching(self.where):
            await self.client.xadd(self.keys.stream, {ENTRY_FIELD: data})

    async def publish_model(self, card: ModelCard) -> None:
        """Store the card for the monitor; while Redis cannot take it, or should it lose it
        (a restart without an append-only file), keep trying in the background."""
        data = json.dumps(card.to_json(), separators=(",", ":")).encode("utf-8")
        try:
            with reaching(self.where):
                earlier = await self.client.set(self.keys.model, data, get=True)
        except TransportUnavailable as error:
            log.warning("could not store the model card yet (%s); trying again in the background", error)
        else:
            if earlier is not None and earlier != data:
                log.warning("%s held another model's card; replaced by this one (%s): every inference process "
                            "on stream %r should serve the same model", self.keys.model, card.name,
                            self.context.settings.bus.stream)
        self._tasks.append(asyncio.create_task(self._keep_card(data), name="monitord-redis-card"))

    async def _keep_card(self, data: bytes) -> None:
        while True:
            try:
                with reaching(self.where):
                    if await self.client.set(self.keys.model, data, nx=True):
                        log.info("stored the model card in %s", self.keys.model)
            except TransportUnavailable as error:
                log.debug("could not check the model card: %s", error)
            except Exception:  # a bug must not end the task for good
                log.exception("checking the model card failed")
            await asyncio.sleep(CARD_CHECK_SECONDS)

    def lag(self) -> int | None:
        """As last polled (None: not known yet, or Redis cannot be reached)."""
        if not self._watching_lag:
            self._watching_lag = True
            self._tasks.append(asyncio.create_task(self._watch_lag(), name="monitord-redis-lag"))
        return self._lag

    async def _watch_lag(self) -> None:
        counts = CountsReader(self.client, self.keys)
        while True:
            try:
                with reaching(self.where):
                    self._lag = (await counts.read()).lag
            except TransportUnavailable:
                self._lag = None
            except Exception:  # a bug must not leave the lag frozen at its last value
                log.exception("reading the monitor's lag failed")
                self._lag = None
            await asyncio.sleep(LAG_POLL_SECONDS)

    def reply_address(self) -> str:
        assert self._replies is not None, "start() first"
        return self._replies.address()

    async def verdicts(self, reply_to: str, timeout: float) -> list[Verdict] | None:
        assert self._replies is not None, "start() first"
        return await self._replies.wait(reply_to, timeout)

    async def monitor_status(self) -> dict[str, Any] | None:
        try:
            with reaching(self.where):
                data = await self.client.get(self.keys.status)
        except TransportUnavailable as error:
            log.debug("cannot read the monitor's status: %s", error)
            return None
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError as error:
            log.warning("the monitor's status in %s cannot be read: %s", self.keys.status, error)
            return None

    def monitor_link(self) -> RedisMonitorLink:
        if self._link is None:
            self._link = RedisMonitorLink(self)
        return self._link
