"""One active monitor at a time: a key holding the holder's token, expiring unless renewed.

The holder renews it every third of ``bus.lease_seconds``; a standby takes it once it has
expired, that is about ``lease_seconds`` after the holder stopped renewing (crashed,
paused, cut off). The holder also keeps its own reckoning: it counts the lease as held
only until ``lease_seconds`` after the last renewal Redis confirmed, measured from before
that renewal was sent, which is never later than Redis's own expiry. So a holder that
cannot renew stops applying before a standby can take over, and every write it makes is
fenced by the token besides (``scripts``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio

from monitord.cancelling import cancel_and_wait
from monitord.transport.contract import LeaseLost, TransportUnavailable

from . import scripts
from .connection import reaching

log = logging.getLogger("monitord.redis")


class Lease:
    def __init__(self, client: redis.asyncio.Redis, key: str, token: str, seconds: float, where: str) -> None:
        self.key = key
        self.token = token
        self.seconds = seconds
        self._milliseconds = max(1, int(seconds * 1000))
        self._where = where
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._renew = client.register_script(scripts.RENEW)
        self._release = client.register_script(scripts.RELEASE)
        #: Monotonic time until which the lease is surely this token's (0: not held).
        self._valid_until = 0.0
        self._lost_reason = ""
        self._renewing: asyncio.Task[None] | None = None

    async def try_take(self) -> bool:
        """Take the lease if it is free (or already this token's); renew it from then on."""
        sent = time.monotonic()
        with reaching(self._where):
            taken = await self._acquire(keys=[self.key], args=[self.token, self._milliseconds])
        if not taken:
            return False
        self._valid_until = sent + self.seconds
        self._lost_reason = ""
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._keep_renewed(), name="monitord-redis-lease")
        return True

    def check(self) -> None:
        """``LeaseLost`` unless the lease is surely still this token's."""
        if self._lost_reason:
            raise LeaseLost(self._lost_reason)
        if self._valid_until <= time.monotonic():
            raise LeaseLost(f"the lease {self.key} could not be renewed within {self.seconds:g} s "
                            "(bus.lease_seconds); a standby may hold it now")

    def lost(self, reason: str) -> None:
        """Redis said the lease is another's: stop counting it as held."""
        self._lost_reason = reason
        self._valid_until = 0.0

    async def release(self) -> None:
        """Give the lease up at once (a standby need not wait for it to expire)."""
        await self._stop_renewing()
        if self._valid_until == 0.0 and self._lost_reason:
            return
        self._valid_until = 0.0
        try:
            with reaching(self._where):
                await self._release(keys=[self.key], args=[self.token])
        except TransportUnavailable as error:
            log.warning("could not give up the monitor's lease (%s); a standby takes over once it expires", error)

    async def close(self) -> None:
        await self._stop_renewing()

    async def _stop_renewing(self) -> None:
        if self._renewing is not None:
            await cancel_and_wait([self._renewing])
            self._renewing = None

    async def _keep_renewed(self) -> None:
        while not self._lost_reason:
            await asyncio.sleep(self.seconds / 3)
            sent = time.monotonic()
            try:
                with reaching(self._where):
                    renewed = await self._renew(keys=[self.key], args=[self.token, self._milliseconds])
            except TransportUnavailable as error:
                log.debug("could not renew the monitor's lease: %s", error)
                continue
            except Exception:  # a bug: keep trying; the lease lapses here if it persists
                log.exception("renewing the monitor's lease failed")
                continue
            if renewed:
                self._valid_until = sent + self.seconds
            else:
                self.lost(f"the lease {self.key} expired and another monitor took it")
