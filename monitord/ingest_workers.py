"""The main process's side of ``pipeline.workers``: start the worker processes, record
their batches, restart one that dies, and stop them with the daemon.

See ``ingest_worker`` for what a worker does. Here each one gets a socket pair for its
messages (``ingest_channel``) and the daemon's listening sockets (when they serve HTTP),
and its batches go to the same observers as the main process's own
(``observers.LocalObservers``), one message at a time, so the detectors see every
inference exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from monitord.ingest_channel import Channel, ChannelClosed
from monitord.metrics import Metrics
from monitord.metrics_relay import replay
from monitord.observers import BatchObserver
from monitord.settings import Settings

log = logging.getLogger("monitord.ingest")

#: Seconds before a worker that exited unexpectedly is started again, doubling on each
#: failure in a row up to ``MAX_RESTART_DELAY``.
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
#: A worker that served this long counts as healthy again (its next failure waits the least).
HEALTHY_AFTER = 60.0


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0
    #: The worker's queue depths by stage, as it last reported them.
    depths: dict[str, float] = field(default_factory=dict)


class IngestWorkers:
    """``count`` worker processes: serving ``POST /v1/predict`` on ``listeners`` (if any),
    and each running its share of the partitioned sources."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        listeners: list[socket.socket],
        main_url: str,
        observer: BatchObserver,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.count = count
        self.listeners = listeners
        self.main_url = main_url
        self.observer = observer
        self.metrics = metrics
        self._workers = [_Worker(index) for index in range(1, count + 1)]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()  # set by stop/close; also ends a restart's wait at once

    async def start(self) -> None:
        """Start every worker; returns at once (each reports ``ready`` when it serves)."""
        self._tasks = [asyncio.create_task(self._keep(worker), name=f"ingest-{worker.index}")
                       for worker in self._workers]

    async def wait_ready(self) -> None:
        await asyncio.gather(*(worker.ready.wait() for worker in self._workers))

    def deepest(self, stage: str) -> float:
        """The fullest of the workers' queues at ``stage``, as last reported."""
        return max((worker.depths.get(stage, 0.0) for worker in self._workers), default=0.0)

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers if worker.process is not None]

    async def stop(self) -> None:
        """Tell every worker to finish what it took in and exit; wait for them."""
        self._stopped.set()
        for worker in self._workers:
            if worker.channel is not None:
                try:
                    worker.channel.send(("stop",))
                except ChannelClosed:
                    pass
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Kill what is still running (after ``stop`` ran out of time)."""
        self._stopped.set()
        for worker in self._workers:
            process = worker.process
            if process is not None and process.returncode is None:
                log.warning("ingest worker %d (pid %d) did not stop in time; killing it", worker.index, process.pid)
                process.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def send_to_share(self, source: str, share: int | None, message: Any) -> None:
        """Hand ``message`` to the worker running share ``share`` of ``source`` (all of them
        with None): its instance's ``receive``. Dropped where a worker is not running; a
        worker finds its work by itself when it starts."""
        for worker in self._workers:
            if share is not None and worker.index != share + 1:
                continue
            if worker.channel is not None:
                try:
                    worker.channel.send(("source", source, message))
                except ChannelClosed:
                    pass

    async def _keep(self, worker: _Worker) -> None:
        """Run ``worker``; start it again if it dies while the daemon runs."""
        loop = asyncio.get_running_loop()
        while not self._stopped.is_set():
            started = loop.time()
            try:
                status: int | str | None = await self._run_once(worker)
            except OSError as error:  # could not start it (out of processes or descriptors)
                status = f"not started: {error}"
            if self._stopped.is_set():
                return
            if loop.time() - started > HEALTHY_AFTER:
                worker.failures = 0
            delay = min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2 ** worker.failures)
            worker.failures += 1
            log.error("ingest worker %d exited unexpectedly (status %s); starting it again in %.0f s",
                      worker.index, status, delay)
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _run_once(self, worker: _Worker) -> int | None:
        ours, theirs = socket.socketpair()
        listen_fds = [listener.fileno() for listener in self.listeners]
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "monitord.ingest_worker", "--index", str(worker.index),
                "--channel-fd", str(theirs.fileno()), "--listen-fds", ",".join(map(str, listen_fds)),
                pass_fds=[theirs.fileno(), *listen_fds],
            )
        finally:
            theirs.close()
        channel = await Channel.open(ours)
        worker.channel = channel
        try:
            channel.send(("config", self.settings.model_dump(), self.main_url))
            await self._serve(worker, channel)
        except ChannelClosed:
            pass
        finally:
            worker.channel = None
            worker.depths = {}
            await channel.close()
        try:
            # A worker that closed its end exits right after; one that hangs is killed.
            return await asyncio.wait_for(worker.process.wait(), timeout=10)
        except TimeoutError:
            worker.process.kill()
            return await worker.process.wait()

    async def _serve(self, worker: _Worker, channel: Channel) -> None:
        while True:
            message = await channel.receive()
            kind = message[0]
            if kind == "batch":
                _, sequence, predictions, signals, records = message
                replay(self.metrics, records)
                try:
                    self.observer.observe(predictions, signals)
                except Exception:  # a bug of ours; the worker's clients must not wait for ever
                    log.exception("recording a batch of %d from ingest worker %d failed",
                                  len(predictions), worker.index)
                channel.send(("ack", sequence))
            elif kind == "metrics":
                replay(self.metrics, message[1])
            elif kind == "depths":
                worker.depths = message[1]
            elif kind == "ready":
                log.info("worker %d (pid %d) ingesting", worker.index, message[1])
                worker.ready.set()
            elif kind == "stopped":
                return
            else:
                log.warning("ingest worker %d sent an unknown message %r", worker.index, kind)
