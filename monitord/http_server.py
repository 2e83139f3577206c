"""The HTTP server's core: JSON errors, health, readiness and ``/metrics``.

Sources add their own routes (the built-in HTTP source adds ``POST /v1/predict``).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from monitord.metrics import Metrics

log = logging.getLogger("monitord.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Readiness:
    """Whether the daemon takes work now, and if not, why (shown by ``/readyz``)."""

    ready: bool = False
    reason: str = "starting"

    def set(self, ready: bool, reason: str) -> None:
        self.ready, self.reason = ready, reason


def json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, "status": status, **extra}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON with a reason, including aiohttp's own (404, 405, 413)."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        message = error.text if error.text and not error.text.startswith(f"{error.status}:") else error.reason
        if error.status == 413:
            message = f"request body too large: {error.text}"
        response = json_error(error.status, message)
        for header in ("Retry-After", "Allow"):
            if header in error.headers:
                response.headers[header] = error.headers[header]
        return response


def bearer_auth(token: str, protect_metrics: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Require ``Authorization: Bearer <token>`` on ``/v1/*`` (and ``/metrics`` if asked).

    Health and readiness stay open: orchestrators probe them without credentials. The
    comparison takes constant time, so the token cannot be guessed byte by byte.
    """
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/v1/") or (protect_metrics and path == "/metrics"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                response = json_error(401, "missing or wrong bearer token: send Authorization: Bearer <http.token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="monitord"'
                return response
        return await handler(request)

    return check


def build_app(
    metrics: Metrics,
    readiness: Readiness,
    max_body_bytes: int,
    token: str | None = None,
    protect_metrics: bool = False,
) -> web.Application:
    middlewares: list = [json_errors]
    if token:
        middlewares.append(bearer_auth(token, protect_metrics))
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status = 200 if readiness.ready else 503
        return web.json_response({"ready": readiness.ready, "reason": readiness.reason}, status=status)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
