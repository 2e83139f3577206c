"""Built-in source ``http``: ``POST /v1/predict`` with one image or a multipart batch.

Errors are JSON with a reason: 415 for a media type we do not take, 413 for a body over
``http.max_body_bytes`` (or more than ``http.max_parts`` parts), 422 for an image that
does not decode, 503 with ``Retry-After`` while the daemon is starting, stopping or
saturated (the request is refused whole, never queued without bound).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import BodyPartReader, web

from monitord.hookspecs import hookimpl
from monitord.http_server import json_error
from monitord.items import Outcome, Prediction, WorkItem
from monitord.pipeline import PipelineClosed, PipelineFull
from monitord.sources import Source, SourceContext

RAW_TYPES = ("application/octet-stream",)


class HttpSource(Source):
    def __init__(self, context: SourceContext) -> None:
        super().__init__(context)
        self.settings = context.settings.http
        self._open = False
        self._in_flight = 0
        self._finished = asyncio.Event()
        self._finished.set()

    def setup(self) -> None:
        self.context.app.router.add_post("/v1/predict", self.predict)

    def describe(self) -> str:
        return f"http: POST http://{self.settings.host}:{self.settings.port}/v1/predict"

    async def start(self) -> None:
        self._open = True

    async def stop(self) -> None:
        self._open = False
        await self._finished.wait()

    async def predict(self, request: web.Request) -> web.StreamResponse:
        if not self._open:
            return self._unavailable("the daemon is not accepting images right now (starting or stopping)")
        self._in_flight += 1
        self._finished.clear()
        try:
            return await self._predict(request)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._finished.set()

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            return self._reject(413, f"request body is {length} bytes, over the limit of "
                                f"{self.settings.max_body_bytes} (http.max_body_bytes)")
        content_type = request.content_type
        item_id = request.query.get("id") or uuid.uuid4().hex
        label = request.query.get("label")
        if content_type.startswith("multipart/"):
            return await self._predict_multipart(request, item_id, label)
        if not (content_type.startswith("image/") or content_type in RAW_TYPES):
            return self._reject(415, f"unsupported media type {content_type!r}: send one image as the raw "
                                "body (image/* or application/octet-stream) or several as multipart/form-data")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(413, f"request body over the limit of {self.settings.max_body_bytes} bytes "
                                "(http.max_body_bytes)")
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
            reader = await request.multipart()
        except (ValueError, AssertionError) as error:
            return self._reject(400, f"malformed multipart body: {error}")
        items: list[WorkItem] = []
        names: list[str | None] = []
        total = 0
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    return self._reject(400, "nested multipart bodies are not supported; send one flat form")
                if len(items) >= self.settings.max_parts:
                    return self._reject(413, f"more than {self.settings.max_parts} images in one request "
                                        "(http.max_parts); split the batch")
                chunks = []
                while chunk := await part.read_chunk():
                    total += len(chunk)
                    if total > self.settings.max_body_bytes:
                        return self._reject(413, f"multipart body over the limit of "
                                            f"{self.settings.max_body_bytes} bytes (http.max_body_bytes)")
                    chunks.append(chunk)
                names.append(part.filename)
                items.append(WorkItem(id=f"{base_id}-{len(items)}", source=self.name, payload=b"".join(chunks),
                                      label=label))
        except (ValueError, AssertionError) as error:
            return self._reject(400, f"malformed multipart body: {error}")
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

    async def _run(self, items: list[WorkItem]) -> list[Outcome] | web.Response:
        try:
            futures = self.context.pipeline.submit_nowait(items)
        except PipelineFull as error:
            self.context.metrics.images.labels(source=self.name, outcome="throttled").inc(len(items))
            return self._unavailable(f"the daemon is saturated ({error}); retry later")
        except PipelineClosed:
            return self._unavailable("the daemon is not accepting images right now (starting or stopping)")
        return list(await asyncio.gather(*futures))

    def _reject(self, status: int, message: str) -> web.Response:
        self.context.metrics.images.labels(source=self.name, outcome="rejected").inc()
        return json_error(status, message)

    def _unavailable(self, message: str) -> web.Response:
        response = json_error(503, message)
        response.headers["Retry-After"] = str(self.settings.retry_after_seconds)
        return response


@hookimpl
def register_sources(register) -> None:
    register("http", HttpSource)
