"""Verdicts back to the process that published a label batch, over Redis pub/sub.

Each process subscribes to a channel of its own (``StreamKeys.replies``); a reply address
is that channel and a number. The monitor publishes a label batch's verdicts to the
channel its address names, and the subscriber here hands them to whoever waits on that
address. Pub/sub keeps nothing for a subscriber that is away, so replies are best effort:
``POST /v1/feedback`` answers 202 (accepted) when none comes in time, and the labels were
joined all the same.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Sequence

import redis.asyncio

from monitord.cancelling import cancel_and_wait
from monitord.transport.contract import TransportUnavailable
from monitord.transport.entries import Verdict

from .connection import reaching

log = logging.getLogger("monitord.redis")

#: Seconds between attempts to subscribe again after the connection was lost.
RESUBSCRIBE_SECONDS = 1.0
#: An address nobody waited on (its labels never reached the stream) is forgotten after
#: this many seconds, so that such addresses cannot pile up.
FORGET_SECONDS = 300.0


def reply_channel(address: str) -> str:
    """The channel a reply address names."""
    return address.rpartition("#")[0]


def reply_message(address: str, verdicts: Sequence[Verdict]) -> bytes:
    return json.dumps({"to": address, "verdicts": [verdict.to_json() for verdict in verdicts]},
                      separators=(",", ":")).encode("utf-8")


class Replies:
    def __init__(self, client: redis.asyncio.Redis, channel: str, where: str) -> None:
        self.channel = channel
        self._client = client
        self._where = where
        self._numbers = itertools.count(1)
        self._waiting: dict[str, tuple[asyncio.Future[list[Verdict]], float]] = {}
        self._listening: asyncio.Task[None] | None = None
        self._pubsub: redis.asyncio.client.PubSub | None = None

    async def start(self) -> None:
        """Subscribe (``TransportUnavailable`` when Redis cannot be reached) and listen."""
        self._pubsub = await self._subscribe()
        self._listening = asyncio.create_task(self._listen(), name="monitord-redis-replies")

    async def close(self) -> None:
        if self._listening is not None:
            await cancel_and_wait([self._listening])
        await self._drop_pubsub()
        for future, _ in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    def address(self) -> str:
        """A new address; its verdicts are awaited with ``wait``."""
        self._forget_old()
        address = f"{self.channel}#{next(self._numbers)}"
        self._waiting[address] = (asyncio.get_running_loop().create_future(), time.monotonic())
        return address

    async def wait(self, address: str, timeout: float) -> list[Verdict] | None:
        waiting = self._waiting.get(address)
        if waiting is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(waiting[0]), timeout)
        except TimeoutError:
            return None
        finally:
            self._waiting.pop(address, None)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - FORGET_SECONDS
        for address in [address for address, (_, made) in self._waiting.items() if made < horizon]:
            self._waiting.pop(address)[0].cancel()

    def _deliver(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            address = message["to"]
            verdicts = [Verdict.from_json(record) for record in message["verdicts"]]
        except (ValueError, KeyError, TypeError) as error:
            log.warning("a reply on %s that cannot be read was ignored: %s", self.channel, error)
            return
        waiting = self._waiting.get(address)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(verdicts)

    async def _subscribe(self) -> redis.asyncio.client.PubSub:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            with reaching(self._where):
                await pubsub.subscribe(self.channel)
        except BaseException:
            await pubsub.aclose()
            raise
        return pubsub

    async def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            try:
                await pubsub.aclose()
            except Exception:  # a connection already gone; nothing to close
                pass

    async def _listen(self) -> None:
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe()
                    log.info("subscribed again to %s for verdicts", self.channel)
                with reaching(self._where):
                    message = await self._pubsub.get_message(timeout=1.0)
            except TransportUnavailable as error:
                log.debug("the reply subscription is down (%s); subscribing again in %g s", error,
                          RESUBSCRIBE_SECONDS)
                await self._drop_pubsub()
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
                continue
            except Exception:  # a bug must not end the subscription for good
                log.exception("the reply subscription failed; subscribing again in %g s", RESUBSCRIBE_SECONDS)
                await self._drop_pubsub()
                await asyncio.sleep(RESUBSCRIBE_SECONDS)
                continue
            if message is not None and message.get("type") == "message":
                self._deliver(message["data"])
