"""Spooled, retried, in-order HTTP delivery: the machinery the webhook and alertmanager
sinks share.

``enqueue`` writes each request to the sink's spool (``spool.Spool``) and returns; one
task per destination URL posts that URL's requests oldest first. A 2xx answer is
delivered (file deleted); a connection error, timeout, 408, 429 or 5xx is a failed
attempt, retried after a full-jitter exponential backoff (uniform in
[0, min(backoff_max_seconds, backoff_initial_seconds * 2**attempt)]) without letting later
requests overtake it; any other 4xx is a refusal that no retry fixes: logged and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field

from monitord.alerting.sinks import SinkContext, SinkOptions
from monitord.alerting.spool import Spool, SpoolEntry

log = logging.getLogger("monitord.alerts")

RETRYABLE_STATUS = frozenset({408, 425, 429})


class DeliveryOptions(SinkOptions):
    """Options every spooling HTTP sink takes."""

    #: Seconds one POST may take before it counts as a failed attempt.
    timeout_seconds: float = Field(10.0, gt=0)
    #: Full-jitter exponential backoff between attempts: the n-th retry waits a random
    #: time up to min(backoff_max_seconds, backoff_initial_seconds * 2**n).
    backoff_initial_seconds: float = Field(1.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    #: Pending notifications kept on disk, at most; when full the oldest is dropped.
    max_spool: int = Field(10_000, gt=0)


def redact(url: str) -> str:
    """``scheme://host:port``: URL paths and user info often hold tokens; keep them out of logs."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def backoff_delay(attempt: int, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(maximum, initial * 2**attempt)]."""
    return rng() * min(maximum, initial * (2.0 ** min(attempt, 60)))


class HttpDelivery:
    """Durable POSTs for one sink. ``sign(body) -> headers`` adds per-request headers that
    must not be stored (a signature); stored headers go to disk with the body."""

    def __init__(
        self,
        context: SinkContext,
        options: DeliveryOptions,
        sign: Callable[[bytes], Mapping[str, str]] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.context = context
        self.options = options
        self.spool = Spool(context.state_dir / "spool" / context.name, options.max_spool)
        self._sign = sign
        self._rng = rng
        self._session: aiohttp.ClientSession | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()
        self._down: set[str] = set()
        self._outcomes = {
            outcome: context.metrics.alerts.labels(sink=context.name, outcome=outcome)
            for outcome in ("delivered", "failed", "dropped")
        }
        self._depth = context.metrics.alert_spool_depth.labels(sink=context.name)

    async def start(self) -> None:
        found = await asyncio.to_thread(self.spool.load)
        self._depth.set(len(self.spool))
        if found:
            log.info("sink %s: %d notification(s) left pending by an earlier run; delivering them",
                     self.context.name, len(found))
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.options.timeout_seconds))
        for url in self.spool.urls():
            self._wake_worker(url)

    async def enqueue(self, requests: Sequence[tuple[str, bytes, Mapping[str, str]]]) -> None:
        """Spool each ``(url, body, headers)`` durably, then let its URL's task deliver it."""
        async with self._lock:  # spool writes stay in sequence order
            for url, body, headers in requests:
                entry, dropped = self.spool.reserve(url, body, dict(headers))
                for old in dropped:
                    self._outcomes["dropped"].inc()
                    log.error("sink %s: spool full (max_spool=%d); dropped the oldest notification for %s",
                              self.context.name, self.options.max_spool, redact(old.url))
                    await asyncio.to_thread(Spool.delete, old)
                try:
                    await asyncio.to_thread(self.spool.write, entry)
                except OSError as error:
                    self.spool.forget(entry)
                    self._outcomes["dropped"].inc()
                    log.error("sink %s: cannot write the spool file %s (%s); notification dropped",
                              self.context.name, entry.path, error)
                    continue
                self.spool.mark_written(entry)
                self._depth.set(len(self.spool))
                self._wake_worker(url)

    async def close(self) -> None:
        """Deliver what can be delivered within ``shutdown_timeout``; the rest stays spooled."""
        self._closing.set()
        for event in self._wake.values():
            event.set()
        workers = list(self._workers.values())
        if workers:
            _, pending = await asyncio.wait(workers, timeout=self.context.shutdown_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if len(self.spool):
            log.info("sink %s: %d notification(s) stay in %s for the next start",
                     self.context.name, len(self.spool), self.spool.directory)
        if self._session is not None:
            await self._session.close()

    def _wake_worker(self, url: str) -> None:
        if url not in self._wake:
            self._wake[url] = asyncio.Event()
        self._wake[url].set()
        task = self._workers.get(url)
        if (task is None or task.done()) and not self._closing.is_set():
            self._workers[url] = asyncio.create_task(self._worker(url), name=f"sink-{self.context.name}")

    async def _worker(self, url: str) -> None:
        wake = self._wake[url]
        attempt = 0
        while True:
            entry = self.spool.next_for(url)
            if entry is None:
                if self._closing.is_set():
                    return
                wake.clear()
                await wake.wait()
                continue
            outcome = await self._post(entry)
            if outcome == "retry":
                self._outcomes["failed"].inc()
                if self._closing.is_set():
                    return
                delay = backoff_delay(attempt, self.options.backoff_initial_seconds,
                                      self.options.backoff_max_seconds, self._rng)
                attempt += 1
                try:
                    await asyncio.wait_for(self._closing.wait(), delay)
                    return  # closing: leave it spooled
                except TimeoutError:
                    continue
            attempt = 0
            if self.spool.forget(entry):
                self._outcomes[outcome].inc()
            await asyncio.to_thread(Spool.delete, entry)
            self._depth.set(len(self.spool))

    async def _post(self, entry: SpoolEntry) -> str:
        """``delivered``, ``retry`` or ``dropped`` (refused for good)."""
        assert self._session is not None
        headers = {"Content-Type": "application/json", **entry.headers}
        if self._sign is not None:
            headers.update(self._sign(entry.body))
        where = redact(entry.url)
        try:
            async with self._session.post(entry.url, data=entry.body, headers=headers) as response:
                text = await response.text(errors="replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self._note_down(entry.url, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
            return "retry"
        if 200 <= status < 300:
            if entry.url in self._down:
                self._down.discard(entry.url)
                log.info("sink %s: %s reachable again; delivering what waited", self.context.name, where)
            log.debug("sink %s: delivered notification %d to %s", self.context.name, entry.sequence, where)
            return "delivered"
        if status >= 500 or status in RETRYABLE_STATUS:
            self._note_down(entry.url, f"HTTP {status}: {text[:200]}")
            return "retry"
        log.error("sink %s: %s refused a notification with HTTP %d (%s); dropped, retrying cannot help "
                  "(check the receiver and the sink's settings)", self.context.name, where, status, text[:200])
        return "dropped"

    def _note_down(self, url: str, reason: str) -> None:
        if url not in self._down:
            self._down.add(url)
            log.warning("sink %s: delivery to %s failed (%s); retrying with backoff, notifications stay "
                        "in the spool", self.context.name, redact(url), reason)
        else:
            log.debug("sink %s: delivery to %s failed again (%s)", self.context.name, redact(url), reason)
