"""Spooled, retried, in-order HTTP delivery: the machinery the webhook and alertmanager
sinks share.

``enqueue`` writes each notification to the sink's spool (``spool.Spool``), once per URL of
the sink, and returns; one task per URL posts that URL's requests oldest first. The spool
names a URL by its place in the sink's ``urls`` (no credentials on disk): a spooled request
goes to the URL in that place when it is delivered, so a URL whose password was changed
between runs gets the request with the new one, and a request whose place no longer exists
(the list got shorter) is logged and dropped (``outcome="dropped"``). A 2xx answer is
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
    try:
        port = parts.port
    except ValueError:  # not a number: leave it out rather than fail to say what went wrong
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def backoff_delay(attempt: int, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(maximum, initial * 2**attempt)]."""
    return rng() * min(maximum, initial * (2.0 ** min(attempt, 60)))


class HttpDelivery:
    """Durable POSTs for one sink to each of ``urls``. ``sign(body) -> headers`` adds
    per-request headers that must not be stored (a signature); the headers given to
    ``enqueue`` go to disk with the body, so they must hold no secret."""

    def __init__(
        self,
        context: SinkContext,
        options: DeliveryOptions,
        urls: Sequence[str],
        sign: Callable[[bytes], Mapping[str, str]] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.context = context
        self.options = options
        self.urls = list(urls)
        self.spool = Spool(context.state_dir / "spool" / context.name, options.max_spool)
        self._sign = sign
        self._rng = rng
        self._session: aiohttp.ClientSession | None = None
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._wake: dict[int, asyncio.Event] = {}
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()
        self._down: set[int] = set()
        self._depth = context.metrics.alert_spool_depth.labels(sink=context.name)

    async def start(self) -> None:
        found = await asyncio.to_thread(self.spool.load)
        for entry in found:
            await self._settle_earlier(entry)
        self._depth.set(len(self.spool))
        if len(self.spool):
            log.info("sink %s: %d notification(s) left pending by an earlier run; delivering them",
                     self.context.name, len(self.spool))
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.options.timeout_seconds))
        for index in self.spool.url_indexes():
            self._wake_worker(index)

    async def _settle_earlier(self, entry: SpoolEntry) -> None:
        """Resolve an entry an earlier run spooled against today's ``urls``: migrate a file
        that holds its URL, drop (logged and counted) one whose URL is gone."""
        if entry.legacy_url is not None:
            if entry.legacy_url in self.urls:
                moved = self.spool.migrated(entry, self.urls.index(entry.legacy_url))
                try:
                    await asyncio.to_thread(self.spool.write, moved)
                    log.info("sink %s: spool file %s named its URL; rewritten to name its place in urls "
                             "instead", self.context.name, entry.path.name)
                except OSError as error:
                    log.error("sink %s: cannot rewrite the spool file %s without its URL (%s); it is "
                              "delivered all the same", self.context.name, entry.path, error)
                return
            why = f"for {redact(entry.legacy_url)}, a URL no longer in the sink's urls"
        elif entry.url_index < len(self.urls):
            return
        else:
            why = (f"for URL number {entry.url_index + 1}, but the sink now has {len(self.urls)} URL(s) "
                   "(urls changed between runs)")
        self.spool.forget(entry)
        self.context.count("dropped")
        log.error("sink %s: dropped a notification an earlier run spooled %s (spool file %s)",
                  self.context.name, why, entry.path.name)
        await asyncio.to_thread(Spool.delete, entry)

    async def enqueue(self, notifications: Sequence[tuple[bytes, Mapping[str, str]]]) -> None:
        """Spool each ``(body, headers)`` durably for every URL, then let each URL's task
        deliver it. ``headers`` are stored: never pass a secret in them (see ``sign``)."""
        async with self._lock:  # spool writes stay in sequence order
            for body, headers in notifications:
                for index in range(len(self.urls)):
                    await self._spool(index, body, headers)

    async def _spool(self, index: int, body: bytes, headers: Mapping[str, str]) -> None:
        """Write one request to the spool (dropping the oldest when full) and wake its task."""
        entry, dropped = self.spool.reserve(index, body, dict(headers))
        for old in dropped:
            self.context.count("dropped")
            log.error("sink %s: spool full (max_spool=%d); dropped the oldest notification for %s",
                      self.context.name, self.options.max_spool, self._where(old.url_index))
            await asyncio.to_thread(Spool.delete, old)
        try:
            await asyncio.to_thread(self.spool.write, entry)
        except OSError as error:
            self.spool.forget(entry)
            self.context.count("dropped")
            log.error("sink %s: cannot write the spool file %s (%s); notification dropped",
                      self.context.name, entry.path, error)
            return
        self.spool.mark_written(entry)
        self._depth.set(len(self.spool))
        self._wake_worker(index)

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

    def _where(self, index: int) -> str:
        return redact(self.urls[index]) if 0 <= index < len(self.urls) else f"URL number {index + 1}"

    def _wake_worker(self, index: int) -> None:
        if index not in self._wake:
            self._wake[index] = asyncio.Event()
        self._wake[index].set()
        task = self._workers.get(index)
        if (task is None or task.done()) and not self._closing.is_set():
            self._workers[index] = asyncio.create_task(self._worker(index), name=f"sink-{self.context.name}")

    async def _worker(self, index: int) -> None:
        wake = self._wake[index]
        attempt = 0
        while True:
            entry = self.spool.next_for(index)
            if entry is None:
                if self._closing.is_set():
                    return
                wake.clear()
                await wake.wait()
                continue
            outcome = await self._post(entry)
            if outcome == "retry":
                self.context.count("failed")
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
                self.context.count(outcome)
            await asyncio.to_thread(Spool.delete, entry)
            self._depth.set(len(self.spool))

    async def _post(self, entry: SpoolEntry) -> str:
        """``delivered``, ``retry`` or ``dropped`` (refused for good)."""
        assert self._session is not None
        headers = {"Content-Type": "application/json", **entry.headers}
        if self._sign is not None:
            headers.update(self._sign(entry.body))
        index = entry.url_index
        where = self._where(index)
        try:
            async with self._session.post(self.urls[index], data=entry.body, headers=headers) as response:
                text = await response.text(errors="replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self._note_down(index, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
            return "retry"
        if 200 <= status < 300:
            if index in self._down:
                self._down.discard(index)
                log.info("sink %s: %s reachable again; delivering what waited", self.context.name, where)
            log.debug("sink %s: delivered notification %d to %s", self.context.name, entry.sequence, where)
            return "delivered"
        if status >= 500 or status in RETRYABLE_STATUS:
            self._note_down(index, f"HTTP {status}: {text[:200]}")
            return "retry"
        log.error("sink %s: %s refused a notification with HTTP %d (%s); dropped, retrying cannot help "
                  "(check the receiver and the sink's settings)", self.context.name, where, status, text[:200])
        return "dropped"

    def _note_down(self, index: int, reason: str) -> None:
        if index not in self._down:
            self._down.add(index)
            log.warning("sink %s: delivery to %s failed (%s); retrying with backoff, notifications stay "
                        "in the spool", self.context.name, self._where(index), reason)
        else:
            log.debug("sink %s: delivery to %s failed again (%s)", self.context.name, self._where(index), reason)
