"""The daemon's lifecycle: start everything in order, run, and stop without losing work.

Start: HTTP server first (so ``/healthz`` answers and ``/readyz`` says why it is not ready
yet), then the model (loaded, or trained on first use, off the event loop), then the
detectors and the alerting (alert sinks are built right after the HTTP server, so a bad
sink setting fails fast, and started once the detectors exist; spooled notifications
from an earlier run are delivered then), then the pipeline, then the sources. Stop on
SIGTERM/SIGINT in the reverse order: sources stop taking work and wait for what they
took, the pipeline flushes its partial batch, the sinks flush what they can (undelivered
notifications stay in their spool; open alerts stay open for the next start), and the
whole stop is bounded by ``pipeline.shutdown_timeout``. A folder file whose
outcome was not reached stays in the inbox, untouched, for the next start.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import signal
import socket
from pathlib import Path

from aiohttp import web

from monitord.alerting.dispatcher import AlertDispatcher
from monitord.alerting.episodes import AlertSource, default_instance
from monitord.alerting.sinks import Sink, SinkContext, build_sinks
from monitord.api import add_api_routes
from monitord import reference_cache
from monitord.background import BackgroundJobs
from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.gc_tuning import freeze_startup_objects
from monitord.http_server import BodyPace, Readiness, build_app, listening_sockets, make_runner
from monitord.ingest_workers import IngestWorkers
from monitord.memory_bound import allocate_large_blocks_by_mmap
from monitord.metrics import Metrics
from monitord.model import Model
from monitord.pipeline import Pipeline
from monitord.plugins import PluginHost
from monitord.predictions_log import PredictionsLog
from monitord.settings import Settings, SinkSpec
from monitord.snapshots import DetectorSnapshots, reference_fingerprint
from monitord.state_files import prepare_state_dir
from monitord.sources import Source, SourceContext

log = logging.getLogger("monitord")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class StartupError(Exception):
    """The daemon cannot start; the message says what to fix."""


class Daemon:
    def __init__(self, settings: Settings, plugins: PluginHost) -> None:
        prepare_state_dir(Path(settings.state_dir))  # 0700, before anything is written in it
        self.settings = settings
        self.plugins = plugins
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.stop_requested = asyncio.Event()
        #: Start-up jobs in threads of their own, which a stop does not wait for.
        self.background = BackgroundJobs()
        token = settings.http.token.get_secret_value() if settings.http.token else None
        self.app = build_app(
            self.metrics, self.readiness, settings.http.max_body_bytes, token, settings.http.protect_metrics
        )
        self.detectors: DetectorStage | None = None
        self.feedback: Feedback | None = None
        add_api_routes(
            self.app,
            settings.feedback,
            lambda: self.feedback,
            lambda: self.detectors,
            settings.http.retry_after_seconds,
            BodyPace.of(settings.http),
        )
        self.predictions_log = self._open_predictions_log()
        self.pipeline = Pipeline(settings.pipeline, self.metrics, self.predictions_log)
        self.sources = [self._build_source(name) for name in settings.sources]
        self.metrics.declare_sources(settings.sources)
        self.worker_count = self._worker_processes()
        self.sinks: list[Sink] = []
        self.alerting: AlertDispatcher | None = None
        self.snapshots: DetectorSnapshots | None = None
        self._runner: web.AppRunner | None = None
        self.workers: IngestWorkers | None = None
        self._listeners: list[socket.socket] = []
        self._public_sites: list[web.SockSite] = []
        self._main_url = ""
        self._ready_task: asyncio.Task[None] | None = None
        #: ``coordinate()`` of each source the workers run.
        self._coordinators: list[asyncio.Task[None]] = []

    @property
    def external_url(self) -> str:
        if self.settings.alerts.external_url:
            return self.settings.alerts.external_url.rstrip("/")
        host = self.settings.http.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.settings.http.port}"

    @property
    def instance(self) -> str:
        return self.settings.alerts.instance or default_instance(self.settings.http.host, self.settings.http.port)

    def _sink_context(self, spec: SinkSpec) -> SinkContext:
        return SinkContext(
            name=spec.label,
            type=spec.type,
            options=spec.options(),
            state_dir=Path(self.settings.state_dir),
            metrics=self.metrics,
            alerts=self.settings.alerts,
            external_url=self.external_url,
            shutdown_timeout=self.settings.pipeline.shutdown_timeout,
        )

    def _open_predictions_log(self) -> PredictionsLog | None:
        options = self.settings.predictions_log
        if not options.enabled:
            return None
        return PredictionsLog(self.settings.state_dir / "predictions.jsonl", options.max_bytes, options.backups)

    def _build_source(self, name: str) -> Source:
        factory = self.plugins.factory("source", name)
        context = SourceContext(
            name=name,
            settings=self.settings,
            pipeline=self.pipeline,
            metrics=self.metrics,
            app=self.app,
            options=self.settings.source_options.get(name, {}),
        )
        return factory(context)

    async def run(self) -> int:
        """Run until a stop is requested; return the process exit code.

        A stop requested during start-up (while the model loads or trains, say) does not
        wait for the start-up: it is abandoned where it stands (see ``background``), what
        was already started is stopped, and the daemon exits.
        """
        allocate_large_blocks_by_mmap()  # keeps resident memory within memory_bound's figure
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        starting = asyncio.create_task(self._start(), name="start")
        stopping = asyncio.create_task(self.stop_requested.wait(), name="stop-requested")
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("stopping during start-up (%s); not waiting for it", self.readiness.reason)
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            self.readiness.set(False, "shutting down")
            await self._stop()
            log.info("stopped")
            return 0
        try:
            starting.result()
        except StartupError as error:
            stopping.cancel()
            log.error("%s", error)
            await self._stop()
            return 1
        await stopping
        self.readiness.set(False, "shutting down")
        try:
            async with asyncio.timeout(self.settings.pipeline.shutdown_timeout):
                await self._drain()
        except TimeoutError:
            log.warning(
                "shutdown deadline of %.1fs passed with work in flight (pipeline.shutdown_timeout); "
                "unfinished files stay in the inbox for the next start",
                self.settings.pipeline.shutdown_timeout,
            )
        await self._stop()
        log.info("stopped")
        return 0

    def request_stop(self, signum: int | None = None) -> None:
        if signum is not None and not self.stop_requested.is_set():
            log.info("received %s, finishing in-flight work", signal.Signals(signum).name)
        self.stop_requested.set()

    async def _start(self) -> None:
        for source in self.sources:
            try:
                source.setup()
            except Exception as error:
                raise StartupError(f"source {source.name} cannot start: {error}") from error
        self._runner = make_runner(self.app, self.settings.http, shutdown_timeout=5.0)
        await self._runner.setup()
        try:
            await self._listen()
        except OSError as error:
            raise StartupError(
                f"cannot listen on {self.settings.http.host}:{self.settings.http.port}: {error.strerror}; "
                "pick another port with http.port or MONITORD_HTTP__PORT"
            ) from None
        log.info("HTTP on http://%s:%d (/metrics, /healthz, /readyz)", self.settings.http.host,
                 self.settings.http.port)
        if self.settings.http.token is None and not is_loopback(self.settings.http.host):
            log.warning(
                "http.host = %s accepts connections from other machines and http.token is not set: "
                "anyone who reaches port %d can post images and labels; set http.token "
                "(MONITORD_HTTP__TOKEN) or bind to 127.0.0.1",
                self.settings.http.host, self.settings.http.port,
            )

        if self.settings.alerts.enabled:
            try:
                self.sinks = build_sinks(
                    self.settings.sinks, lambda kind: self.plugins.factory("sink", kind), self._sink_context
                )
            except ValueError as error:
                raise StartupError(f"cannot build the alert sinks: {error}") from None

        self.readiness.set(False, "loading model")
        try:
            model = await self.background.run("load-model", self._load_model)
        except Exception as error:
            raise StartupError(f"cannot load the model: {error}") from error
        self.metrics.describe_build(model=model.name, device=model.device)
        log.info("model %s on %s, %d classes", model.name, model.device, len(model.class_names))
        self.readiness.set(False, "building detectors")
        # Detectors keep what they compute from the reference (calibrations) across restarts.
        reference_cache.activate(
            reference_cache.ReferenceCache.for_daemon(self.settings.model_artifact, self.settings.state_dir)
        )
        try:
            # Off the event loop: detectors may calibrate on their reference (seconds).
            detectors = await self.background.run(
                "build-detectors",
                DetectorStage.build,
                self.settings.detectors,
                lambda kind: self.plugins.factory("detector", kind),
                model.reference_signals,
                self.metrics,
            )
        except Exception as error:
            model.close()
            raise StartupError(f"cannot build the detectors: {error}") from None
        if self.settings.snapshots.enabled:
            self.snapshots = DetectorSnapshots(
                Path(self.settings.state_dir),
                detectors,
                reference_fingerprint(model.name, model.reference_signals),
            )
            # Before the alerting starts: reopened alert episodes meet restored detectors.
            await asyncio.to_thread(self.snapshots.restore)
        if self.settings.alerts.enabled:
            self.alerting = AlertDispatcher(
                self.settings.alerts,
                self.sinks,
                AlertSource(model=model.name, instance=self.instance, generator_url=self.external_url + "/v1/detectors"),
                Path(self.settings.state_dir),
            )
            self.alerting.attach(detectors)
            await self.alerting.start()
            log.info("alerts to %s", ", ".join(getattr(sink, "name", "?") for sink in self.sinks) or "no sink")
        feedback = Feedback(self.settings.feedback, self.metrics)
        feedback.attach(model.class_names, detectors)
        await self.pipeline.start(model, detectors, feedback)
        self.detectors, self.feedback = detectors, feedback
        if self.snapshots is not None:
            self.snapshots.start(self.settings.snapshots.interval_seconds)
        # The collection before the freeze takes ~0.1 s with torch loaded: after readiness.
        asyncio.get_running_loop().call_later(1.0, freeze_startup_objects)
        for source in self.sources:
            if self._in_workers(source):
                log.info("source %s: run by the %d worker processes, each over its share", source.name,
                         self.worker_count)
                continue
            await source.start()
            log.info("source %s", source.describe())
        if self.predictions_log is not None:
            log.info("predictions log: %s", self.predictions_log.path)
        log.info("state: %s", Path(self.settings.state_dir).resolve())
        if self.worker_count:
            assert self.pipeline.observer is not None
            self.workers = IngestWorkers(self.settings, self.worker_count, self._listeners,
                                         self._main_url, self.pipeline.observer, self.metrics)
            await self.workers.start()
            for source in self.sources:
                if self._in_workers(source):
                    send = functools.partial(self.workers.send_to_share, source.name)
                    self._coordinators.append(asyncio.create_task(source.coordinate(send),
                                                                  name=f"coordinate-{source.name}"))
            self.metrics.report_other_queues(self.workers.deepest)
            self.readiness.set(False, f"starting {self.worker_count} worker process(es)")
            self._ready_task = asyncio.create_task(self._ready_with_workers(self.workers))
        else:
            self.readiness.set(True, "ready")

    def _worker_processes(self) -> int:
        """``pipeline.workers``, or 0 where there is nothing for them to do."""
        count = self.settings.pipeline.workers
        shared = "http" in self.settings.sources or any(source.partitioned for source in self.sources)
        if count and not shared:
            log.warning("pipeline.workers = %d ignored: neither the http source nor a source that workers share "
                        "(folder) is enabled (sources = %s)", count, self.settings.sources)
            return 0
        return count

    def _serves_http_in_workers(self) -> bool:
        return bool(self.worker_count) and "http" in self.settings.sources

    def _in_workers(self, source: Source) -> bool:
        """Whether the worker processes run ``source`` instead of this one."""
        return bool(self.worker_count) and source.partitioned

    async def _listen(self) -> None:
        """Serve the app on ``http.host:http.port``.

        With worker processes and the http source, the main process makes the listening
        sockets (the workers accept on the same ones) and serves on a loopback port of its
        own, where the workers pass every request but ``POST /v1/predict``. It accepts on
        the public sockets too until every worker serves, so health checks answer while
        the model loads, and then leaves them to the workers: it holds the detectors, the
        feedback join and the alerting, which must not wait behind HTTP parsing.
        """
        assert self._runner is not None
        if not self._serves_http_in_workers():
            await web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port).start()
            return
        self._listeners = listening_sockets(self.settings.http.host, self.settings.http.port)
        # Duplicates: stopping a site closes its socket, and the workers (restarted ones
        # too) still need the originals.
        self._public_sites = [web.SockSite(self._runner, listener.dup()) for listener in self._listeners]
        for site in self._public_sites:
            await site.start()
        internal = socket.create_server(("127.0.0.1", 0))
        internal.setblocking(False)
        await web.SockSite(self._runner, internal).start()
        self._main_url = f"http://127.0.0.1:{internal.getsockname()[1]}"

    async def _ready_with_workers(self, workers: IngestWorkers) -> None:
        await workers.wait_ready()
        for site in self._public_sites:
            await site.stop()
        self._public_sites = []
        log.info("%d worker process(es) serving beside the main process (pids %s)", workers.count,
                 ", ".join(map(str, workers.pids)))
        if not self.stop_requested.is_set():
            self.readiness.set(True, "ready")

    def _load_model(self) -> Model:
        factory = self.plugins.factory("model", self.settings.model.type)
        return factory(self.settings.model, self.settings.state_dir)

    async def _drain(self) -> None:
        self.pipeline.flush_early()
        for task in self._coordinators:
            task.cancel()
        await asyncio.gather(*self._coordinators, return_exceptions=True)
        # Workers finish their requests while the main process still records their batches.
        stopping = [source.stop() for source in self.sources]
        if self.workers is not None:
            stopping.append(self.workers.stop())
        await asyncio.gather(*stopping)
        await self.pipeline.drain()

    async def _stop(self) -> None:
        if self._ready_task is not None:
            self._ready_task.cancel()
        for task in self._coordinators:
            task.cancel()
        if self.workers is not None:
            await self.workers.close()
        await self.pipeline.close()
        if self.snapshots is not None:
            await self.snapshots.stop()
            if self.detectors is not None:
                # After the last batch, so the next start continues exactly from here.
                await asyncio.to_thread(self.snapshots.save)
        if self.alerting is not None:
            # After the pipeline: notifications the last batches raised still reach the sinks.
            await self.alerting.close()
        if self._runner is not None:
            await self._runner.cleanup()
        for listener in self._listeners:
            listener.close()
        if self.predictions_log is not None:
            self.predictions_log.close()
