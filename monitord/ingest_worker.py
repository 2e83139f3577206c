"""A worker process: ingests images beside the main process.

One Python process is bound by its interpreter lock: parsing HTTP and multipart bodies,
reading, moving and describing folder files, decoding images and answering in JSON take
about as much CPU as the model itself, and on a GPU the event loop starves the thread
that feeds the device. With ``pipeline.workers = N`` the main process starts N of these
(``ingest_workers``). Each one runs a pipeline and a model of its own under the sources
that can run in several processes: the built-in HTTP source, accepting connections on
the daemon's listening socket (the same socket, shared, so an idle process takes the
next connection), and every partitioned source (the folder source) over its share of
the work (``sources.Partition``: worker ``I`` of ``N`` takes share ``I - 1``). Every
batch of predictions goes with its signals to the main process, which holds the one set
of drift detectors, the feedback join, the predictions log and the metrics
(``observers.LocalObservers``); a batch's outcomes (a client's answer, a file's move)
are carried out only once it is recorded there. Every other HTTP path (``/metrics``,
``/healthz``, ``/v1/feedback``, ...) is passed to the main process over loopback.

Started as ``python -m monitord.ingest_worker --channel-fd N --listen-fds A,B --index I``
by the main process, never by hand: its settings arrive over the channel.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Mapping, Sequence

import numpy as np
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from monitord.gc_tuning import freeze_startup_objects
from monitord.http_server import base_app, body_timeout_error, json_error, make_runner
from monitord.ingest_channel import Channel, ChannelClosed
from monitord.items import Prediction
from monitord.logging_setup import configure_logging
from monitord.memory_bound import allocate_large_blocks_by_mmap
from monitord.metrics import Metrics
from monitord.metrics_relay import FLUSH_SECONDS, MetricsRelay, relayed_metrics
from monitord.pipeline import Pipeline
from monitord.plugins import load_plugins
from monitord.settings import Settings
from monitord.sources import Partition, Source, SourceContext

log = logging.getLogger("monitord.ingest")

#: Headers that describe one hop, not the message (RFC 9110 section 7.6.1), and the ones
#: aiohttp sets again for the forwarded body.
_HOP_HEADERS = frozenset(
    name.lower() for name in (
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Proxy-Authenticate", "Proxy-Authorization", "Content-Length", "Expect",
    )
)


class RelayObserver:
    """Sends each batch to the main process; the batch counts as recorded once acknowledged."""

    def __init__(self, channel: Channel, relay: MetricsRelay, encode_lines: bool = False) -> None:
        self._channel = channel
        self._relay = relay
        #: The main process writes the predictions log: encode each line here, in parallel
        #: with the other workers, and send it along (``Prediction.json_line`` keeps it).
        self._encode_lines = encode_lines
        self._waiting: dict[int, asyncio.Future[None]] = {}
        self._sequence = 0

    def observe(self, predictions: Sequence[Prediction], signals: Mapping[str, np.ndarray]) -> asyncio.Future[None]:
        self._sequence += 1
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._encode_lines:
            for prediction in predictions:
                prediction.json_line()
        try:
            self._channel.send(("batch", self._sequence, list(predictions), dict(signals), self._relay.take()))
        except ChannelClosed as error:
            recorded.set_exception(error)
            return recorded
        self._waiting[self._sequence] = recorded
        return recorded

    def acknowledged(self, sequence: int) -> None:
        recorded = self._waiting.pop(sequence, None)
        if recorded is not None and not recorded.done():
            recorded.set_result(None)
            # After the pipeline's callbacks (scheduled first) have counted the batch's
            # outcomes: the counts reach the main process before the clients' answers.
            asyncio.get_running_loop().call_soon(self.flush_metrics)

    def flush_metrics(self) -> None:
        records = self._relay.take()
        if records:
            try:
                self._channel.send(("metrics", records))
            except ChannelClosed:
                pass

    def fail_all(self, reason: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for recorded in waiting.values():
            if not recorded.done():
                recorded.set_exception(ChannelClosed(reason))


class MainProcessProxy:
    """Passes a request to the main process over loopback and its answer back."""

    def __init__(self, main_url: str, body_timeout: float, retry_after: int) -> None:
        """Bodies are capped by the app's ``client_max_size`` (``http.max_body_bytes``)."""
        self._main_url = main_url.rstrip("/")
        self._body_timeout = body_timeout
        self._retry_after = retry_after
        self._session: ClientSession | None = None

    async def start(self) -> None:
        # Bodies pass through as they are: no decompression, no cookies, no redirects.
        self._session = ClientSession(auto_decompress=False, timeout=ClientTimeout(total=None, connect=10))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        try:
            async with asyncio.timeout(self._body_timeout):
                body = await request.read()
        except TimeoutError:
            return body_timeout_error(self._body_timeout)
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_HEADERS}
        try:
            async with self._session.request(
                request.method, self._main_url + request.rel_url.raw_path_qs, headers=headers,
                data=body or None, allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                response = web.Response(status=answer.status, body=payload)
                for name, value in answer.headers.items():
                    if name.lower() not in _HOP_HEADERS:
                        response.headers.add(name, value)
                return response
        except (ClientError, OSError) as error:
            log.warning("cannot reach the main process for %s %s: %s", request.method, request.path, error)
            response = json_error(503, "the daemon's main process cannot be reached right now; retry later")
            response.headers["Retry-After"] = str(self._retry_after)
            return response


class IngestWorker:
    """One worker's life: configure, load the model, serve, stop when told."""

    def __init__(self, index: int, channel: Channel, listeners: list[socket.socket]) -> None:
        self.index = index
        self.channel = channel
        self.listeners = listeners
        self.stop_requested = asyncio.Event()
        self.main_gone = False

    async def run(self) -> int:
        kind, settings_data, main_url = await self.channel.receive()
        if kind != "config":
            raise RuntimeError(f"expected the configuration first, got {kind!r}")
        settings = Settings.model_validate(settings_data)
        configure_logging(settings.log_level, process=f"ingest-{self.index}")
        allocate_large_blocks_by_mmap()  # as the main process: keeps memory within memory_bound's figure
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        plugins = load_plugins()
        relay = MetricsRelay()
        metrics = relayed_metrics(relay)
        token = settings.http.token.get_secret_value() if settings.http.token else None
        app = base_app(settings.http.max_body_bytes, token, settings.http.protect_metrics)
        pipeline = Pipeline(settings.pipeline, metrics)
        partition = Partition(self.index - 1, settings.pipeline.workers)

        def build(name: str, share: Partition | None) -> Source:
            return plugins.factory("source", name)(
                SourceContext(name=name, settings=settings, pipeline=pipeline, metrics=metrics, app=app,
                              options=settings.source_options.get(name, {}), partition=share,
                              coordinated=share is not None)
            )

        sources = [build("http", None)] if self.listeners else []
        for name in settings.sources:
            if name != "http" and getattr(plugins.factory("source", name), "partitioned", False):
                sources.append(build(name, partition))
        for source in sources:
            source.setup()
        proxy: MainProcessProxy | None = None
        if self.listeners:
            proxy = MainProcessProxy(main_url, settings.http.body_timeout_seconds,
                                     settings.http.retry_after_seconds)
            app.router.add_route("*", "/{path:.*}", proxy)
        model = await asyncio.to_thread(plugins.factory("model", settings.model.type), settings.model,
                                        settings.state_dir)
        observer = RelayObserver(self.channel, relay, encode_lines=settings.predictions_log.enabled)
        await pipeline.start(model, observer=observer)
        runner: web.AppRunner | None = None
        sites: list[web.SockSite] = []
        if proxy is not None:
            await proxy.start()
            runner = make_runner(app, settings.http, shutdown_timeout=5.0)
            await runner.setup()
            sites = [web.SockSite(runner, listener) for listener in self.listeners]
            for site in sites:
                await site.start()
        freeze_startup_objects()
        for source in sources:
            await source.start()
        listen = asyncio.create_task(self._listen(observer, {source.name: source for source in sources}),
                                     name="channel")
        flush = asyncio.create_task(self._flush(observer, metrics), name="metrics-relay")
        self.channel.send(("ready", os.getpid()))
        log.info("%s with %s on %s", "; ".join(source.describe() for source in sources), model.name, model.device)
        await self.stop_requested.wait()
        for site in sites:  # no new connections here; the other processes take them
            await site.stop()
        # With the main process gone nothing can be recorded: what is in flight fails at
        # once (``NotRecorded``: files stay in the inbox, their claims released), so the
        # wait is short.
        deadline = settings.pipeline.shutdown_timeout if not self.main_gone else 2.0
        try:
            async with asyncio.timeout(deadline):
                await asyncio.gather(*(source.stop() for source in sources))
                if not self.main_gone:
                    await pipeline.drain()
        except TimeoutError:
            log.warning("stopping with work in flight after %.1f s", deadline)
        flush.cancel()
        if not self.main_gone:
            try:
                observer.flush_metrics()
                self.channel.send(("stopped",))
                await self.channel.drain()
            except ChannelClosed:
                pass
        listen.cancel()
        await asyncio.gather(listen, flush, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        await pipeline.close()
        if proxy is not None:
            await proxy.close()
        await self.channel.close()
        return 1 if self.main_gone else 0

    async def _listen(self, observer: RelayObserver, sources: dict[str, Source]) -> None:
        try:
            while True:
                message = await self.channel.receive()
                if message[0] == "ack":
                    observer.acknowledged(message[1])
                elif message[0] == "stop":
                    self.stop_requested.set()
                elif message[0] == "source":  # from the source's coordinate() in the main process
                    source = sources.get(message[1])
                    try:
                        if source is not None:
                            source.receive(message[2])
                    except Exception:  # a bug in the source must not cut this process off
                        log.exception("source %s could not take a message from the main process", message[1])
        except ChannelClosed:
            log.error("the main process is gone; stopping without finishing in-flight requests")
            self.main_gone = True
            observer.fail_all("the daemon's main process is gone")
            self.stop_requested.set()

    async def _flush(self, observer: RelayObserver, metrics: Metrics) -> None:
        """Counts no batch carried, and the queue depths, every ``FLUSH_SECONDS``."""
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            observer.flush_metrics()
            depths = {sample.labels["stage"]: sample.value
                      for family in metrics.queue_depth.collect() for sample in family.samples}
            try:
                self.channel.send(("depths", depths))
            except ChannelClosed:
                return


async def _main(index: int, channel_fd: int, listen_fds: list[int]) -> int:
    channel = await Channel.open(socket.socket(fileno=channel_fd))
    listeners = [socket.socket(fileno=fd) for fd in listen_fds]
    return await IngestWorker(index, channel, listeners).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="monitord ingest worker (started by the daemon)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--listen-fds", default="")
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group; the main process decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    listen_fds = [int(fd) for fd in args.listen_fds.split(",") if fd]
    return asyncio.run(_main(args.index, args.channel_fd, listen_fds))


if __name__ == "__main__":
    sys.exit(main())
