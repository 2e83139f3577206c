"""The HTTP server's core: JSON errors, health, readiness, ``/metrics``, and the limits
that keep slow or greedy clients from tying the server up.

Sources add their own routes (the built-in HTTP source adds ``POST /v1/predict``).

Time limits on a connection (aiohttp has only the keep-alive one):

- ``http.header_timeout_seconds``: from the moment a connection opens, and from the first
  byte of each later request on a kept-alive connection, the client has this long to send
  the request line and every header. ``GuardedRequestHandler`` enforces it; a client
  that trickles its headers (slowloris) is answered 408 and disconnected.
- ``http.body_timeout_seconds``, ``http.min_body_rate_bytes`` and
  ``http.body_rate_grace_seconds``: handlers that read a body do it under a
  ``BodyPace.watch`` and answer 408 through ``answer_and_close``: a body must arrive whole
  within the timeout and, after the grace period, at the minimum rate on average.
- ``KEEPALIVE_TIMEOUT_SECONDS``: an idle kept-alive connection is closed by aiohttp itself.
- A second request pipelined behind one being handled is not under the header deadline
  (its bytes arrive while no request is awaited); the keep-alive timer bounds it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import StreamReader, hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import BadStatusLine, HttpProcessingError, InvalidURLError, LineTooLong

from monitord.metrics import Metrics
from monitord.settings import HttpSettings

log = logging.getLogger("monitord.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Readiness:
    """Whether the daemon takes work now, and if not, why (shown by ``/readyz``)."""

    ready: bool = False
    reason: str = "starting"
    #: Shutting down: every answer closes its connection, so no client sends another
    #: request on it while the server goes away (which would reset it).
    draining: bool = False
    #: The drift reference the detectors use (``monitord.reference.serving``), once known.
    reference: dict[str, Any] | None = None

    def set(self, ready: bool, reason: str) -> None:
        self.ready, self.reason = ready, reason


def json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, "status": status, **extra}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON with a reason, including aiohttp's own (404, 405, 413)."""
    if "Content-Type" in request.headers:
        try:
            request.content_type  # parsed by the email package, which raises IndexError on some garbage
        except Exception:
            return json_error(415, f"the Content-Type header {request.headers['Content-Type']!r} cannot be parsed; "
                              "send a media type such as image/png or application/json")
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
    except ConnectionError:
        raise  # the client went away: there is no one to answer
    except Exception as error:  # a bug of ours: still JSON, and logged with its traceback
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, f"internal error ({type(error).__name__}); see the daemon's log")


def bearer_auth(token: str, protect_metrics: bool) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Require ``Authorization: Bearer <token>`` on ``/v1/*`` (and ``/metrics`` if asked).

    Health and readiness stay open: orchestrators probe them without credentials. The
    comparison takes constant time, so the token cannot be guessed byte by byte.
    """
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/v1/") or (protect_metrics and path == "/metrics"):
            if not bearer_matches(request.headers.get(hdrs.AUTHORIZATION, ""), expected):
                response = json_error(401, "missing or wrong bearer token: send Authorization: Bearer <http.token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="monitord"'
                return response
        return await handler(request)

    return check


def bearer_matches(header: str, expected: bytes) -> bool:
    """Whether an ``Authorization`` value carries the bearer token ``expected``.

    The scheme is matched case-insensitively and may be followed by several spaces (RFC
    7235 §2.1); the token is compared in constant time. aiohttp decodes header bytes that
    are not UTF-8 as lone surrogates ("surrogateescape"), which gives them back unchanged.
    """
    scheme, _, credentials = header.partition(" ")
    try:
        given = credentials.lstrip(" ").encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate aiohttp's decoding cannot have produced
        given = b""
    matches = hmac.compare_digest(given, expected)
    return matches and scheme.lower() == "bearer"


def base_app(max_body_bytes: int, token: str | None = None, protect_metrics: bool = False) -> web.Application:
    """An application with the daemon's middlewares (JSON errors, bearer token) and no
    routes; ``build_app`` adds health, readiness and ``/metrics``."""
    middlewares: list = [json_errors]
    if token:
        middlewares.append(bearer_auth(token, protect_metrics))
    return web.Application(client_max_size=max_body_bytes, middlewares=middlewares)


def build_app(
    metrics: Metrics,
    readiness: Readiness,
    max_body_bytes: int,
    token: str | None = None,
    protect_metrics: bool = False,
) -> web.Application:
    app = base_app(max_body_bytes, token, protect_metrics)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status = 200 if readiness.ready else 503
        body: dict[str, Any] = {"ready": readiness.ready, "reason": readiness.reason}
        if readiness.reference is not None:
            body["reference"] = readiness.reference
        return web.json_response(body, status=status)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    @web.middleware
    async def close_while_draining(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if readiness.draining:
            # A refusal sent before the body was read would cut the client off mid-upload
            # (it sees a broken connection, not the 503): take in a small body first.
            await discard_body(request, DRAIN_BODY_BYTES, DRAIN_BODY_SECONDS)
            response.force_close()
        return response

    app.middlewares.append(close_while_draining)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


#: While shutting down, a refused request's unread body is taken in up to this size and
#: time, so its client reads the 503 instead of a broken connection.
DRAIN_BODY_BYTES = 1 << 20
DRAIN_BODY_SECONDS = 1.0


async def discard_body(request: web.Request, limit: int, seconds: float) -> None:
    """Read and drop what is left of ``request``'s body, at most ``limit`` bytes for at most
    ``seconds`` (a larger or slower one is left: its connection is closed on it)."""
    content = request.content
    taken = 0
    try:
        async with asyncio.timeout(seconds):
            while not content.at_eof() and taken <= limit:
                chunk = await content.readany()
                if not chunk:
                    break
                taken += len(chunk)
    except (TimeoutError, ConnectionError):
        pass


# -- connection limits -------------------------------------------------------------------

#: Seconds an idle kept-alive connection stays open. aiohttp's own default (3630 s) lets
#: every client that sent one request hold a socket for an hour; 75 s (nginx's default)
#: still outlasts the 60 s idle timeout of common proxies and load balancers, so they
#: close first and never reuse a connection this server is closing.
KEEPALIVE_TIMEOUT_SECONDS = 75.0

#: Longest request line, and longest header line, in bytes: aiohttp's defaults, set here
#: so that the answer past them can name them.
MAX_LINE_BYTES = 8190


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, plus a deadline for each request's line and headers.

    aiohttp has no such deadline. The nearest is its keep-alive timer: armed when the
    connection opens and after each response, it closes a connection still waiting for a
    complete request when it fires, so a client that sends one header byte every few
    seconds keeps the connection (and a file descriptor) for the whole
    ``keepalive_timeout``: 3630 s by default, ``KEEPALIVE_TIMEOUT_SECONDS`` here. Here a timer is
    armed when the connection opens and again when the first byte of a later request
    arrives while the connection waits for one; it is disarmed as soon as aiohttp's parser
    has produced a complete request head. If it fires first, the client gets a 408 (when
    it sent anything) and the connection is closed.

    A request aiohttp's parser refuses (an over-long line, ``GET *``, a malformed header)
    is answered by ``handle_error``: JSON like every other error, and nothing of the
    request is logged or echoed, since the parser's message quotes the request line or a
    header, and those may hold a credential (a token sent as a query parameter, say).

    It relies on these aiohttp internals (checked against 3.14.5; tests/test_http_aiohttp_pins.py
    pins them): ``_request_count`` grows by one for each request head the parser completes
    (or refuses) in ``data_received``; ``_waiter`` is a pending future exactly while
    ``start()`` waits for the next request (so bytes that arrive then begin a new head,
    never a body); ``_messages`` holds parsed requests not yet handled; ``force_close()``
    closes the transport and ends ``start()``, as aiohttp's own keep-alive timeout does;
    ``handle_error(request, status, exc, message)`` makes the response for each request
    the parser refused (``exc`` the ``HttpProcessingError``), and for a handler's exception
    that escaped the application.
    """

    __slots__ = ("_header_timeout", "_header_timer", "_head_bytes", "_timeout_response", "_line_length",
                 "_last_line_length")

    def __init__(
        self, manager: web.Server, *, header_timeout: float, timeout_response: bytes, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._timeout_response = timeout_response
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        # The request line's length in the head being received, once its end has arrived,
        # and in the head completed last (None: unknown, a pipelined head): it tells an
        # over-long URL (414) from an over-long header (431).
        self._line_length: int | None = None
        self._last_line_length: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and data and self._waiting_for_request():
            self._arm_header_timer()
        if self._header_timer is not None and self._line_length is None and (end := data.find(b"\n")) >= 0:
            self._line_length = self._head_bytes + end
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            # Known only for the head the timer watched from its first byte, if this data ended it.
            if self._request_count - parsed == 1 and self._header_timer is not None:
                self._last_line_length = (self._line_length if self._line_length is not None
                                             else self._head_bytes + len(data))
            else:
                self._last_line_length = None
            self._disarm_header_timer()
        elif self._header_timer is not None:
            self._head_bytes += len(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _waiting_for_request(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _arm_header_timer(self) -> None:
        self._head_bytes = 0
        self._line_length = None
        self._header_timer = self._loop.call_later(self._header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._force_close or self.transport is None or self._messages or self._request_in_progress:
            return
        log.debug("closing the connection from %s: no complete request head within %.1f s "
                  "(http.header_timeout_seconds), %d byte(s) received",
                  self.peername, self._header_timeout, self._head_bytes)
        if self._head_bytes:
            self.transport.write(self._timeout_response)
        self.force_close()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own answer to a request it refused or a failure it caught, as JSON.

        ``message`` (the parser's, quoting the client's bytes) is neither logged nor sent.
        """
        if isinstance(exc, HttpProcessingError):
            status, reason = refused_head_reason(exc, self._last_line_length)
            log.debug("refused a request from %s that cannot be parsed: %s (answered %d)",
                      request.remote, type(exc).__name__, status)
        elif isinstance(exc, ConnectionError):  # the client went away mid-request (json_errors lets it through)
            log.debug("the connection from %s was lost during a request", request.remote)
            reason = "the connection was lost"
        elif status == 504:
            reason = "the request took too long to handle; retry later"
        else:  # a handler's exception escaped the application (json_errors catches the rest)
            log.error("a request from %s failed", request.remote, exc_info=exc)
            status, reason = 500, f"internal error ({type(exc).__name__}); see the daemon's log"
        if request.writer.output_size > 0:  # as aiohttp: the answer has begun, the connection is broken
            raise ConnectionError("response already started; cannot send the error")
        response = json_error(status, reason)
        response.force_close()
        return response


def refused_head_reason(error: HttpProcessingError, line_length: int | None) -> tuple[int, str]:
    """The status and reason for a request head aiohttp's parser refused with ``error``.

    ``line_length``: the request line's length in bytes, as far as it had arrived (None:
    unknown). The reason names what was wrong, never the client's bytes.
    """
    if isinstance(error, LineTooLong):
        advice = f"longer than {MAX_LINE_BYTES} bytes; send long data in the request body"
        if line_length is None:
            return 400, f"the request line or a header line is {advice}"
        if line_length > MAX_LINE_BYTES:
            return 414, f"the request line (method and URL) is {advice}, not in the URL"
        return 431, f"a header line is {advice}, not in a header"
    if isinstance(error, InvalidURLError):
        return 400, "the request target is not a valid URL path; send a path such as /v1/predict"
    if isinstance(error, BadStatusLine):  # BadHttpMethod included
        return 400, "not an HTTP request: the request line must read METHOD /path HTTP/1.1"
    return 400, (f"malformed request head ({type(error).__name__}): a header or the framing of the "
                 "request does not parse; check the client")


class GuardedServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory) making ``GuardedRequestHandler``s."""

    def __init__(self, handler: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._header_timeout = header_timeout
        body = json.dumps({
            "error": f"the request line and headers did not arrive within {header_timeout:g} s "
                     "(http.header_timeout_seconds); send the whole request head at once",
            "status": 408,
        }).encode()
        self._timeout_response = (
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )

    def __call__(self) -> web.RequestHandler:
        return GuardedRequestHandler(
            self, loop=self._loop, header_timeout=self._header_timeout,
            timeout_response=self._timeout_response, **self._kwargs,
        )


class GuardedAppRunner(web.AppRunner):
    """An ``AppRunner`` whose server enforces ``http.header_timeout_seconds``.

    aiohttp builds its stock ``Server`` (running the app's start-up and freezing it); this
    runner takes that server's handler, request factory and settings into a
    ``GuardedServer``, so every aiohttp option passed here still applies.
    """

    __slots__ = ("_header_timeout",)

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        stock = await super()._make_server()
        return GuardedServer(
            stock.request_handler,
            request_factory=stock.request_factory,
            handler_cancellation=stock.handler_cancellation,
            loop=stock._loop,
            header_timeout=self._header_timeout,
            **stock._kwargs,
        )


def make_runner(app: web.Application, settings: HttpSettings, shutdown_timeout: float = 5.0) -> web.AppRunner:
    """The runner the daemon serves ``app`` with: header deadline and keep-alive limit set."""
    return GuardedAppRunner(
        app,
        header_timeout=settings.header_timeout_seconds,
        keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
        access_log=None,  # no access log: a request's URL may hold a credential
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
    )


# -- request bodies ----------------------------------------------------------------------


class BodyTooLarge(Exception):
    """The body grew past the limit given to ``read_body``."""


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes.

    ``request.read()`` caps at the app-wide ``client_max_size``, and
    ``request.content.read(n)`` returns whatever has arrived so far (a body split over
    several packets comes back truncated), hence this loop. Run it under a
    ``BodyPace.watch``.

    The pieces go into one growing buffer (a mapping of its own once past 1 MiB, see
    ``memory_bound.allocate_large_blocks_by_mmap``), not a list joined at the end: a
    list keeps thousands of small blocks on the heap, which stays resident after they
    are freed, and costs a second copy of every body being read.
    """
    body = bytearray()
    while chunk := await request.content.readany():
        if len(body) + len(chunk) > limit:
            raise BodyTooLarge(len(body) + len(chunk))
        body += chunk
    return bytes(body)


def body_timeout_reason(seconds: float) -> str:
    return (f"the request body did not arrive within {seconds:g} s (http.body_timeout_seconds); "
            "send it faster or split it into smaller requests")


class BodyTooSlow(Exception):
    """A request body fell behind its ``BodyPace``; the message says which limit it broke."""


@dataclass(frozen=True)
class BodyPace:
    """How fast a request body must arrive: whole within ``timeout_seconds``, and, after
    ``grace_seconds``, at ``min_rate_bytes`` per second on average (0: no minimum).

    That is, by ``grace_seconds`` plus one second for every ``min_rate_bytes`` received
    so far. The deadline alone let a client that sends a byte a second keep its place
    among ``http.max_concurrent_requests`` for the whole ``http.body_timeout_seconds``;
    with a minimum rate it keeps it for about the grace period.
    """

    timeout_seconds: float
    min_rate_bytes: int = 0
    grace_seconds: float = 0.0

    @classmethod
    def of(cls, settings: HttpSettings) -> BodyPace:
        return cls(settings.body_timeout_seconds, settings.min_body_rate_bytes, settings.body_rate_grace_seconds)

    def watch(self, request: web.BaseRequest) -> PaceWatch:
        """Wrap the reading of ``request``'s body: ``async with pace.watch(request): ...``."""
        return PaceWatch(self, request.content)


class PaceWatch:
    """Cancels the reading inside it once the body falls behind its pace, and raises
    ``BodyTooSlow`` in its place.

    The bytes received are read from the stream aiohttp feeds (``StreamReader.total_bytes``,
    not in aiohttp's documentation; checked against 3.14.5 and pinned by
    tests/test_http_aiohttp_pins.py), not from what the handler has consumed, so a reader
    that takes its data in large pieces (a multipart part) is not cut off while the
    client keeps sending.
    """

    def __init__(self, pace: BodyPace, content: StreamReader) -> None:
        self._pace = pace
        self._content = content
        self._timeout = asyncio.timeout(None)
        self._check: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._start = 0.0
        self._broken = ""  # the reason, once the body fell behind

    async def __aenter__(self) -> PaceWatch:
        self._start = self._loop.time()
        await self._timeout.__aenter__()
        self._check = self._loop.call_at(self._due(), self._on_due)
        return self

    async def __aexit__(self, kind: Any, error: Any, traceback: Any) -> bool | None:
        if self._check is not None:
            self._check.cancel()
        try:
            return await self._timeout.__aexit__(kind, error, traceback)
        except TimeoutError:
            if not self._broken:  # not ours
                raise
            raise BodyTooSlow(self._broken) from None

    def _received(self) -> int:
        """Body bytes received so far, those that came with the head included."""
        return self._content.total_bytes

    def _due(self) -> float:
        """When the body must be whole, or have grown, given the bytes received so far."""
        pace = self._pace
        due = self._start + pace.timeout_seconds
        if pace.min_rate_bytes:
            due = min(due, self._start + pace.grace_seconds + self._received() / pace.min_rate_bytes)
        return due

    def _on_due(self) -> None:
        now, due = self._loop.time(), self._due()
        if due > now:  # more arrived meanwhile: look again then
            self._check = self._loop.call_at(due, self._on_due)
            return
        self._check = None
        pace = self._pace
        if due < self._start + pace.timeout_seconds:
            rate = self._received() / max(now - self._start, 1e-9)
            self._broken = (f"the request body arrived at {rate:.0f} bytes/s, under the minimum of "
                            f"{pace.min_rate_bytes} bytes/s (http.min_body_rate_bytes) that applies after the first "
                            f"{pace.grace_seconds:g} s (http.body_rate_grace_seconds); send it faster")
        else:
            self._broken = body_timeout_reason(pace.timeout_seconds)
        self._timeout.reschedule(now)  # cancels the reading; __aexit__ turns that into BodyTooSlow


async def answer_and_close(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send ``response`` now and close the connection right after it.

    For a client that is too slow sending its body: aiohttp would otherwise keep reading
    (and discarding) the rest of the body for up to its lingering time before closing.
    """
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    protocol = request.protocol
    if protocol is not None:
        protocol.force_close()
    return response


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """Route ``expect_handler`` that does not answer ``100 Continue`` by itself.

    aiohttp's default sends it before the handler runs, so a client would upload its whole
    body only to be refused (401, 429, 503). The handler calls ``send_continue`` once it
    has decided to read the body.
    """
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11 and expect.lower() != "100-continue":
        return json_error(417, f"unsupported Expect: {expect!r}; only 100-continue is understood")
    return None


async def send_continue(request: web.Request) -> None:
    """Tell a client that sent ``Expect: 100-continue`` to go on with its body."""
    if request.version == HttpVersion11 and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # As aiohttp's default expect handler does: the response proper starts after it.
        request.writer.output_size = 0
