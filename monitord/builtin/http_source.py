"""Built-in source ``http``: ``POST /v1/predict`` with one image or a multipart batch.

Errors are JSON with a reason: 415 for a media type we do not take, 413 for a body over
``http.max_body_bytes`` (or more than ``http.max_parts`` parts, or more than the pipeline
ever holds), 422 for an image that does not decode, 408 for a body that does not arrive
within ``http.body_timeout_seconds`` or, after ``http.body_rate_grace_seconds``, slower
than ``http.min_body_rate_bytes`` a second (the connection is closed), 503 with ``Retry-After``
while the daemon is starting, stopping or saturated (the request is refused whole, never
queued without bound), 429 with ``Retry-After`` past ``http.max_concurrent_requests``.

Overload is decided before the body is read wherever it can be: a request over the
concurrency cap, or one arriving while the pipeline has no room (no free slot, no free
byte, or a raw body longer than the bytes left), is refused from its headers, and a client
that sent ``Expect: 100-continue`` is told so before it uploads anything. Each refusal
counts in ``monitord_images_total{outcome="throttled"}``: the images of a request refused
after reading, one for a request refused before (its images were never counted).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from monitord.hookspecs import hookimpl
from monitord.http_server import (
    BodyPace,
    BodyTooLarge,
    BodyTooSlow,
    answer_and_close,
    defer_continue,
    json_error,
    read_body,
    send_continue,
)
from monitord.items import Outcome, Prediction, WorkItem
from monitord.pipeline import PipelineClosed, PipelineFull, PipelineTooLarge
from monitord.sources import Source, SourceContext

RAW_TYPES = ("application/octet-stream",)


class HttpSource(Source):
    def __init__(self, context: SourceContext) -> None:
        super().__init__(context)
        self.settings = context.settings.http
        self._pace = BodyPace.of(self.settings)
        self._open = False
        self._in_flight = 0
        self._finished = asyncio.Event()
        self._finished.set()

    def setup(self) -> None:
        self.context.app.router.add_post("/v1/predict", self.predict, expect_handler=defer_continue)

    def describe(self) -> str:
        return f"http: POST http://{self.settings.host}:{self.settings.port}/v1/predict"

    async def start(self) -> None:
        self._open = True

    async def stop(self) -> None:
        self._open = False
        await self._finished.wait()

    async def predict(self, request: web.Request) -> web.StreamResponse:
        """Check everything the headers tell, then read the body and wait for the outcome."""
        if not self._open:
            return self._unavailable("the daemon is not accepting images right now (starting or stopping)")
        refused = self._check_headers(request)
        if refused is not None:
            return refused
        self._in_flight += 1
        self._finished.clear()
        try:
            await send_continue(request)
            return await self._predict(request)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._finished.set()

    def _check_headers(self, request: web.Request) -> web.Response | None:
        """The refusal a request earns from its headers alone, or None to read its body."""
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            return self._reject(413, f"request body is {length} bytes, over the limit of "
                                f"{self.settings.max_body_bytes} (http.max_body_bytes)")
        content_type = request.content_type
        raw = not content_type.startswith("multipart/")
        if raw and not (content_type.startswith("image/") or content_type in RAW_TYPES):
            return self._reject(415, f"unsupported media type {content_type!r}: send one image as the raw "
                                "body (image/* or application/octet-stream) or several as multipart/form-data")
        pipeline = self.context.pipeline
        # Without Content-Encoding the raw body is the image: its length is its size.
        exact = length if raw and hdrs.CONTENT_ENCODING not in request.headers else None
        limit = pipeline.settings.max_queued_bytes
        if exact is not None and exact > limit:
            return self._reject(413, f"the image is {exact} bytes, more than the daemon ever queues "
                                f"(pipeline.max_queued_bytes = {limit}); send a smaller image")
        if self._in_flight >= self.settings.max_concurrent_requests:
            return self._throttled(429, 1, f"{self._in_flight} requests are being served, the limit "
                                   f"(http.max_concurrent_requests = {self.settings.max_concurrent_requests}); "
                                   "retry later")
        overloaded = pipeline.overloaded()
        if overloaded is not None:  # the monitor lags: refused before the body is read
            return self._throttled(503, 1, f"the daemon is saturated ({overloaded}); retry later")
        if pipeline.free_slots() == 0:
            return self._throttled(503, 1, "the daemon is saturated (its queue holds pipeline.queue_size = "
                                   f"{pipeline.settings.queue_size} images); retry later")
        free_bytes = pipeline.free_bytes()
        if free_bytes == 0 or (exact is not None and exact > free_bytes):
            return self._throttled(503, 1, f"the daemon is saturated (room for {free_bytes} more bytes of "
                                   f"queued images, pipeline.max_queued_bytes = {limit}); retry later")
        return None

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        item_id = request.query.get("id") or uuid.uuid4().hex
        label = request.query.get("label")
        if request.content_type.startswith("multipart/"):
            return await self._predict_multipart(request, item_id, label)
        try:
            async with self._pace.watch(request):
                body = await read_body(request, self.settings.max_body_bytes)
        except BodyTooLarge:
            return self._reject(413, f"request body over the limit of {self.settings.max_body_bytes} bytes "
                                "(http.max_body_bytes)")
        except BodyTooSlow as slow:
            return await self._too_slow(request, slow)
        item = WorkItem(id=item_id, source=self.name, payload=body, label=label)
        outcomes = await self._run([item])
        if isinstance(outcomes, web.Response):
            return outcomes
        outcome = outcomes[0]
        if isinstance(outcome, Prediction):
            return web.json_response(outcome.to_json())
        status = 422 if outcome.outcome == "rejected" else 500
        return json_error(status, outcome.reason, id=outcome.id)

    async def _predict_multipart(self, request: web.Request, base_id: str, label: str | None) -> web.StreamResponse:
        try:
            async with self._pace.watch(request):
                parts = await self._read_parts(request, base_id, label)
        except (ValueError, AssertionError) as error:
            return self._reject(400, f"malformed multipart body: {error}")
        except HttpProcessingError as error:  # a part's headers do not parse (InvalidHeader, LineTooLong)
            return self._reject(400, f"malformed multipart body: {error.message}")
        except BodyTooSlow as slow:
            return await self._too_slow(request, slow)
        if isinstance(parts, web.Response):
            return parts
        items, names = parts
        if not items:
            return self._reject(400, "the multipart body holds no parts; add one image per part")
        outcomes = await self._run(items)
        if isinstance(outcomes, web.Response):
            return outcomes
        results: list[dict[str, Any]] = []
        for filename, outcome in zip(names, outcomes):
            record = outcome.to_json()
            if not isinstance(outcome, Prediction):
                record["status"] = 422 if outcome.outcome == "rejected" else 500
            if filename:
                record["filename"] = filename
            results.append(record)
        errors = sum(1 for outcome in outcomes if not isinstance(outcome, Prediction))
        return web.json_response({"predictions": results, "count": len(results), "errors": errors})

    async def _read_parts(
        self, request: web.Request, base_id: str, label: str | None
    ) -> tuple[list[WorkItem], list[str | None]] | web.Response:
        """Every part of a multipart body as a work item (and its file name), or a refusal."""
        reader = await request.multipart()
        items: list[WorkItem] = []
        names: list[str | None] = []
        total = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                return self._reject(400, "nested multipart bodies are not supported; send one flat form")
            if len(items) >= self.settings.max_parts:
                return self._reject(413, f"more than {self.settings.max_parts} images in one request "
                                    "(http.max_parts); split the batch")
            payload = bytearray()  # one growing buffer, as in read_body
            while chunk := await part.read_chunk():
                total += len(chunk)
                if total > self.settings.max_body_bytes:
                    return self._reject(413, f"multipart body over the limit of "
                                        f"{self.settings.max_body_bytes} bytes (http.max_body_bytes)")
                payload += chunk
            names.append(part_filename(part))
            items.append(WorkItem(id=f"{base_id}-{len(items)}", source=self.name, payload=bytes(payload),
                                  label=label))
        return items, names

    async def _run(self, items: list[WorkItem]) -> list[Outcome] | web.Response:
        try:
            futures = self.context.pipeline.submit_nowait(items)
        except PipelineTooLarge as error:
            return self._reject(413, f"the request can never be queued whole: {error}; split it")
        except PipelineFull as error:
            return self._throttled(503, len(items), f"the daemon is saturated ({error}); retry later")
        except PipelineClosed:
            return self._unavailable("the daemon is not accepting images right now (starting or stopping)")
        try:
            return list(await asyncio.gather(*futures))
        except PipelineClosed as error:  # NotRecorded: the stream could not take the batch
            return self._unavailable(f"the images could not be finished ({error}); retry shortly")

    def _reject(self, status: int, message: str) -> web.Response:
        self.context.metrics.images.labels(source=self.name, outcome="rejected").inc()
        return json_error(status, message)

    async def _too_slow(self, request: web.Request, slow: BodyTooSlow) -> web.StreamResponse:
        self.context.metrics.images.labels(source=self.name, outcome="rejected").inc()
        return await answer_and_close(request, json_error(408, str(slow)))

    def _throttled(self, status: int, images: int, message: str) -> web.Response:
        self.context.metrics.images.labels(source=self.name, outcome="throttled").inc(images)
        return self._unavailable(message, status)

    def _unavailable(self, message: str, status: int = 503) -> web.Response:
        response = json_error(status, message)
        response.headers["Retry-After"] = str(self.settings.retry_after_seconds)
        return response


#: The Content-Disposition every HTTP client writes for a file part, e.g.
#: ``form-data; name="image"; filename="a.png"``: plain quoted values, no escapes.
_SIMPLE_DISPOSITION = re.compile(r'form-data; name="[^"\\]*"; filename="([^"\\]*)"')


def part_filename(part: BodyPartReader) -> str | None:
    """The part's file name. aiohttp's ``filename`` parses the header in full (RFC 2231
    and escapes) and cost more per part than decoding a small image, so the usual plain
    form is read with one regular expression and anything else goes to aiohttp."""
    header = part.headers.get(hdrs.CONTENT_DISPOSITION, "")
    simple = _SIMPLE_DISPOSITION.fullmatch(header)
    if simple is not None:
        return simple.group(1)
    return part.filename


@hookimpl
def register_sources(register) -> None:
    register("http", HttpSource)
