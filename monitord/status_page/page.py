"""``GET /``, its script and style, and ``GET /v1/status``: what the page polls.

Which role serves what: a process shows what it has and says what it has not. The
detectors, their accuracies and open alerts come from the monitor's status (its own, or
the one the active monitor publishes to every node, as ``GET /v1/detectors``); throughput,
latency and recent images exist only where images come in (inference). The one-process
daemon has everything. Behind ``http.token``, ``/v1/status`` needs the bearer token like
every ``/v1/*`` route; the page itself holds no data and stays open, so it can ask for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import resources
from typing import Any, Awaitable, Callable

from aiohttp import web

from monitord.api import detectors_body
from monitord.http_server import Readiness, json_error
from monitord.metrics import Metrics
from monitord.settings import StatusPageSettings
from monitord.status_page.history import History, sample_of
from monitord.status_page.readings import Traffic, finite, model_of
from monitord.status_page.thumbnails import Thumbnails

log = logging.getLogger("monitord.status_page")

#: The page's own files (package data), by the name they are served under.
STATIC = {"status.js": "text/javascript", "status.css": "text/css"}
#: Nothing but our own files, the thumbnails' data URIs and our own JSON.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")

NO_MONITOR = ("no monitor has published the detectors' state yet (starting, or none is running on this "
              "stream)")
MONITOR_ONLY_TRAFFIC = ("throughput and latency are measured where images come in: open the page of an "
                        "inference process, or see monitord_images_total in Prometheus")
MONITOR_ONLY_IMAGES = "images are seen by the inference processes: open the page of one of them"
WORKER_SHARE = ("this is one of the pipeline.workers processes sharing this port: its throughput, latency and "
                "images are its own share; Prometheus sums them all")


class StatusPage:
    """The page's routes, its history (sampled every ``sample_seconds``) and its thumbnails."""

    def __init__(self, settings: StatusPageSettings, role: str, metrics: Metrics, readiness: Readiness,
                 monitor_status: Callable[[], Awaitable[dict[str, Any] | None]]) -> None:
        self.settings = settings
        self.role = role
        self.metrics = metrics
        self.readiness = readiness
        self._monitor_status = monitor_status
        self.sees_images = role in ("all", "inference")
        #: Recent images by class; None where no images come in.
        self.thumbnails = Thumbnails(settings.thumbnails_per_class) if self.sees_images else None
        self.history = History(settings.sample_seconds, settings.history_seconds)
        self._traffic: Traffic | None = None
        self._files = {name: resources.files(__package__).joinpath("static", name).read_bytes()
                       for name in ("index.html", *STATIC)}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/status-page/{name}", self._static)
        app.router.add_get("/v1/status", self._status)

    # -- sampling -------------------------------------------------------------------------

    async def sample_forever(self) -> None:
        """Take a history sample now and every ``sample_seconds`` until cancelled."""
        while True:
            try:
                await self.sample()
            except Exception:  # a bug here must not stop the daemon, nor the next samples
                log.exception("sampling the status page's history failed")
            await asyncio.sleep(self.settings.sample_seconds)

    async def sample(self) -> None:
        status = await self._monitor_status()
        rates = None
        if self.sees_images:
            traffic = Traffic.read(self.metrics, time.monotonic())
            rates = traffic.since(self._traffic) if self._traffic is not None else (None, None)
            self._traffic = traffic
        self.history.add(sample_of(time.time(), status, rates))

    # -- routes ---------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return self._file("index.html", "text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            return json_error(404, f"no such file of the status page: {name!r}; it has {', '.join(STATIC)}")
        return self._file(name, STATIC[name])

    def _file(self, name: str, content_type: str) -> web.Response:
        return web.Response(body=self._files[name], content_type=content_type, charset="utf-8", headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff"})

    async def _status(self, request: web.Request) -> web.Response:
        try:
            since = _query_number(request, "since", float, "the time of the newest history sample the page has "
                                  "(seconds since the epoch)")
            after = _query_number(request, "thumbnails_after", int, "the highest thumbnail id the page has")
        except ValueError as error:
            return json_error(400, str(error))
        return web.json_response(await self.document(since, int(after)))

    async def document(self, since: float = 0.0, thumbnails_after: int = 0) -> dict[str, Any]:
        """``GET /v1/status``'s body: now, the history after ``since``, and the thumbnails
        (their images only above ``thumbnails_after``); ``notes`` say what this process lacks."""
        status = await self._monitor_status()
        notes: dict[str, str] = {}
        body: dict[str, Any] = {
            "role": self.role,
            "ready": self.readiness.ready,
            "reason": self.readiness.reason,
            "time": time.time(),
            "model": model_of(self.metrics),
            "reference": self.readiness.reference,
        }
        if status is None:
            notes["detectors"] = NO_MONITOR
        else:
            body.update(detectors_body(status))
            accuracy = status.get("accuracy")
            if accuracy is not None:
                body["accuracy"] = {"value": finite(accuracy.get("value")), "labels": accuracy.get("labels", 0)}
            if "alerts" in status:
                body["alerts"] = status["alerts"]
            else:
                notes["alerts"] = "alerting is off (alerts.enabled = false)"
        if self.sees_images:
            latest = self.history.latest() or {}
            traffic = Traffic.read(self.metrics, time.monotonic())
            body["traffic"] = {"images": traffic.images, "refused": traffic.refused,
                               "images_per_second": latest.get("images_per_second"),
                               "latency_seconds": latest.get("latency_seconds")}
            if self.metrics.multiprocess:
                notes["traffic"] = WORKER_SHARE
        else:
            notes["traffic"] = MONITOR_ONLY_TRAFFIC
        if self.thumbnails is not None:
            body["thumbnails"] = self.thumbnails.to_json(thumbnails_after)
            if self.thumbnails.per_class == 0:
                notes["thumbnails"] = "no images are kept: status_page.thumbnails_per_class = 0"
        else:
            notes["thumbnails"] = MONITOR_ONLY_IMAGES
        body["history"] = {"sample_seconds": self.history.sample_seconds,
                           "span_seconds": self.history.span_seconds, "samples": self.history.since(since)}
        body["notes"] = notes
        return body


def _query_number(request: web.Request, name: str, kind: type, meaning: str) -> float:
    text = request.query.get(name)
    if text is None:
        return 0
    try:
        value = kind(text)
    except ValueError:
        value = -1
    if not value >= 0:  # NaN included
        raise ValueError(f"query {name} must be a number >= 0, {meaning}; got {text!r}")
    return value
