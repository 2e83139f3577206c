"""The daemon's lifecycle: start everything in order, run, and stop without losing work.

A daemon plays one role or both (``monitord run --role all|inference|monitor``):
inference (sources, model, pipeline, publishing each batch to the stream) and monitor
(applying the stream to the detectors, the feedback join and the alerting). The stream is
a transport plugin chosen by ``bus.url``: the in-process one by default, so one process
does everything with nothing to run beside it.

Start: the sources' routes, then the HTTP server (so ``/healthz`` answers and ``/readyz``
says why it is not ready yet), then the transport and the alert sinks (settings were
checked before anything started), then each role: inference loads the model (off the event loop; it may train
the default one) and publishes its card, the monitor builds its detectors on the card's
reference and takes over the stream (or stands by while another monitor is active).
Stop, on SIGTERM/SIGINT: the sources stop taking work and wait for what they took, the
pipeline flushes its partial batch and publishes it (in-process: applied before that
returns), then the monitor checkpoints and gives its lease up, the sinks flush what they can (undelivered notifications stay in
their spool), and the transport closes; the whole stop is bounded by
``pipeline.shutdown_timeout``. A folder file whose outcome was not reached stays in the
inbox, untouched, for the next start. A stop during start-up abandons the step under way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from monitord.alerting.episodes import AlertSource, default_instance
from monitord.alerting.sinks import Sink, SinkContext, build_sinks
from monitord.api import add_api_routes
from monitord.background import BackgroundJobs
from monitord.cancelling import cancel_and_wait
from monitord.gc_tuning import freeze_startup_objects
from monitord.http_server import Readiness, build_app, make_runner
from monitord.inference.role import InferenceRole, StartupError
from monitord.memory_bound import allocate_large_blocks_by_mmap
from monitord.metrics import Metrics
from monitord.monitor.role import MonitorRole
from monitord.plugin_routes import add_plugin_routes
from monitord.plugins import PluginHost
from monitord.settings import Settings, SinkSpec
from monitord.state_files import prepare_state_dir
from monitord.status_page.page import StatusPage
from monitord.transport.contract import Transport, TransportContext, TransportUnavailable

log = logging.getLogger("monitord")

Role = Literal["all", "inference", "monitor"]
ROLES: tuple[Role, ...] = ("all", "inference", "monitor")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Daemon:
    def __init__(self, settings: Settings, plugins: PluginHost, role: Role = "all") -> None:
        prepare_state_dir(Path(settings.state_dir))  # 0700, before anything is written in it
        self.settings = settings
        self.plugins = plugins
        self.role = role
        self.metrics = Metrics(roles=("inference", "monitor") if role == "all" else (role,))
        self.readiness = Readiness()
        self.stop_requested = asyncio.Event()
        #: Start-up jobs in threads of their own, which a stop does not wait for.
        self.background = BackgroundJobs()
        token = settings.http.token.get_secret_value() if settings.http.token else None
        self.app = build_app(
            self.metrics, self.readiness, settings.http.max_body_bytes, token, settings.http.protect_metrics
        )
        transport_context = TransportContext(settings, Path(settings.state_dir), self.instance, self.metrics)
        self.transport: Transport = plugins.factory("transport", settings.bus.transport)(transport_context)
        self.inference: InferenceRole | None = None
        self.monitor: MonitorRole | None = None
        self._inference_state = "starting"
        self._monitor_state = (False, "starting")
        self.status_page: StatusPage | None = None
        if settings.status_page.enabled:
            self.status_page = StatusPage(settings.status_page, role, self.metrics, self.readiness,
                                          self._detector_status)
            self.status_page.add_routes(self.app)
        thumbnails = self.status_page.thumbnails if self.status_page is not None else None
        if role in ("all", "inference"):
            self.inference = InferenceRole(settings, self.metrics, self.app, plugins, self.transport, self.background,
                                           self.instance, self._inference_says, thumbnails)
        self.sinks: list[Sink] = []
        add_api_routes(self.app, settings, self.metrics, self.readiness, self.transport, self._detector_status,
                       self.instance)
        add_plugin_routes(self.app, plugins, settings)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def external_url(self) -> str:
        if self.settings.alerts.external_url:
            return self.settings.alerts.external_url.rstrip("/")
        return f"http://{default_instance(self.settings.http.host, self.settings.http.port)}"

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

    async def _detector_status(self) -> dict[str, Any] | None:
        """``GET /v1/detectors``: the active monitor's own state here, else what it last
        published (a standby's detectors are not restored until it takes over)."""
        if self.monitor is not None and self.monitor.active:
            return self.monitor.status()
        return await self.transport.monitor_status()

    # -- readiness --------------------------------------------------------------------------

    def _inference_says(self, state: str) -> None:
        self._inference_state = state
        self._update_readiness()

    def _monitor_says(self, active: bool, why: str) -> None:
        self._monitor_state = (active, why)
        self._update_readiness()

    def _update_readiness(self) -> None:
        """Ready when every role this process plays is: inference once it takes images; the
        monitor once it is active, or standing by for another (a standby is healthy)."""
        if self.stop_requested.is_set():
            return
        reasons = []
        if self.inference is not None and self._inference_state != "ready":
            reasons.append(self._inference_state)
        if self.monitor is not None:
            active, why = self._monitor_state
            if not active and not why.startswith("standing by"):
                reasons.append(why)
        if reasons:
            self.readiness.set(False, "; ".join(reasons))
        else:
            standby = self.monitor is not None and not self._monitor_state[0]
            self.readiness.set(True, self._monitor_state[1] if standby else "ready")

    # -- the lifecycle ----------------------------------------------------------------------

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
            await cancel_and_wait([starting])
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
        self.readiness.draining = True
        try:
            async with asyncio.timeout(self.settings.pipeline.shutdown_timeout):
                await self._drain()
        except TimeoutError:
            log.warning(
                "shutdown deadline of %.1fs passed with work in flight (pipeline.shutdown_timeout); "
                "unfinished files stay in the inbox for the next start",
                self.settings.pipeline.shutdown_timeout,
            )
        # Lame duck: requests still arriving get 503 and a closed connection, not a reset.
        await asyncio.sleep(self.settings.http.lame_duck_seconds)
        await self._stop()
        log.info("stopped")
        return 0

    def request_stop(self, signum: int | None = None) -> None:
        if signum is not None and not self.stop_requested.is_set():
            log.info("received %s, finishing in-flight work", signal.Signals(signum).name)
        self.stop_requested.set()

    async def _start(self) -> None:
        if self.inference is not None:
            self.inference.setup()
        self._runner = make_runner(self.app, self.settings.http, shutdown_timeout=5.0)
        await self._runner.setup()
        # Alone on its port, the server answers health checks while the model loads. Sharing
        # it (http.reuse_port) with processes already serving, it joins only once ready: the
        # kernel would otherwise hand it clients to refuse while it loads.
        sharing = self.settings.http.reuse_port
        if not sharing:
            await self._listen()
        if self.settings.http.token is None and not is_loopback(self.settings.http.host):
            log.warning(
                "http.host = %s accepts connections from other machines and http.token is not set: "
                "anyone who reaches port %d can post images and labels; set http.token "
                "(MONITORD_HTTP__TOKEN) or bind to 127.0.0.1",
                self.settings.http.host, self.settings.http.port,
            )
        try:
            await self.transport.start()
        except TransportUnavailable as error:
            raise StartupError(f"cannot reach the stream ({self.transport.name}): {error}") from None
        if self.role in ("all", "monitor"):
            if self.settings.alerts.enabled:
                try:
                    self.sinks = build_sinks(self.settings.sinks, lambda kind: self.plugins.factory("sink", kind),
                                             self._sink_context)
                except ValueError as error:
                    raise StartupError(f"cannot build the alert sinks: {error}") from None
            alert_source = AlertSource(model="", instance=self.instance,
                                       generator_url=self.external_url + "/v1/detectors")
            self.monitor = MonitorRole(self.settings, self.metrics, self.transport, self.sinks, alert_source,
                                       lambda kind: self.plugins.factory("detector", kind), self.background,
                                       self._monitor_says)
        starting = []
        if self.inference is not None:
            starting.append(self._start_inference())
        if self.monitor is not None:
            starting.append(self._start_monitor())
        await asyncio.gather(*starting)
        if sharing:
            await self._listen()
        # The collection before the freeze takes ~0.1 s with torch loaded: after readiness.
        asyncio.get_running_loop().call_later(1.0, freeze_startup_objects)
        if self.status_page is not None:
            self._tasks.append(asyncio.create_task(self.status_page.sample_forever(), name="status-page-history"))
        if self.metrics.multiprocess:  # another process may answer the scrape: keep values current
            self._tasks.append(asyncio.create_task(self._refresh_metrics(), name="metrics-refresh"))
        log.info("state: %s", Path(self.settings.state_dir).resolve())

    async def _listen(self) -> None:
        assert self._runner is not None
        http = self.settings.http
        try:
            await web.TCPSite(self._runner, http.host, http.port, reuse_port=http.reuse_port or None).start()
        except OSError as error:
            raise StartupError(
                f"cannot listen on {http.host}:{http.port}: {error.strerror}; "
                "pick another port with http.port or MONITORD_HTTP__PORT"
            ) from None
        log.info("HTTP on http://%s:%d (/metrics, /healthz, /readyz); role %s, %s transport",
                 http.host, http.port, self.role, self.transport.name)

    async def _refresh_metrics(self) -> None:
        while True:
            self.metrics.refresh()
            await asyncio.sleep(1.0)

    async def _start_inference(self) -> None:
        assert self.inference is not None
        await self.inference.start()
        if self.inference.reference is not None:
            self.readiness.reference = self.inference.reference.description
        self._inference_says("ready")

    async def _start_monitor(self) -> None:
        assert self.monitor is not None
        try:
            await self.monitor.start()
        except Exception as error:
            raise StartupError(f"cannot build the detectors: {error}") from None
        if self.readiness.reference is None and self.monitor.reference is not None:
            self.readiness.reference = dict(self.monitor.reference)

    async def _drain(self) -> None:
        if self.inference is not None:
            await self.inference.drain()

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.inference is not None:
            await self.inference.close()
        if self.monitor is not None:
            # After inference: the last batches it published are applied and checkpointed.
            await self.monitor.stop()
        await self.transport.close()
        if self._runner is not None:
            await self._runner.cleanup()
