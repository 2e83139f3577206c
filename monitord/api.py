"""The daemon's own API routes: label feedback and detector state.

They belong to the daemon, not to a source: labels and detectors exist whichever sources
are enabled, on every node. A label batch goes into the stream like a prediction batch;
the monitor joins each label to its prediction and sends back the verdicts, which the
client gets (or, if they take longer than ``bus.reply_timeout_seconds``, a 202: the labels
are in the stream and will be joined). ``GET /v1/detectors`` (with the estimated accuracy
beside the detectors) answers from the monitor in this process, or from the state the
active monitor last published. Routes are added before the server starts (aiohttp freezes
its router) and answer 503 until the daemon is ready.
"""

from __future__ import annotations

import json
import math
from typing import Any, Awaitable, Callable

from aiohttp import web

from monitord.http_server import (
    BodyPace,
    BodyTooLarge,
    BodyTooSlow,
    Readiness,
    answer_and_close,
    json_error,
    read_body,
)
from monitord.metrics import Metrics
from monitord.settings import Settings
from monitord.transport.contract import Transport, TransportUnavailable
from monitord.transport.entries import LabelBatch, Verdict

#: HTTP status of a single feedback record, by outcome.
_STATUS = {"joined": 200, "held": 202, "accepted": 202, "unknown": 404, "late": 410, "duplicate": 409,
           "invalid": 422}


def add_api_routes(
    app: web.Application,
    settings: Settings,
    metrics: Metrics,
    readiness: Readiness,
    transport: Transport,
    detector_status: Callable[[], Awaitable[dict[str, Any] | None]],
    origin: str = "",
) -> None:
    """Add ``POST /v1/feedback`` and ``GET /v1/detectors``.

    A feedback body that falls behind ``http.body_timeout_seconds`` or
    ``http.min_body_rate_bytes`` is answered 408 and its connection closed.
    """
    feedback = settings.feedback
    pace = BodyPace.of(settings.http)

    def unavailable(message: str) -> web.Response:
        response = json_error(503, message)
        response.headers["Retry-After"] = str(settings.http.retry_after_seconds)
        return response

    async def post_feedback(request: web.Request) -> web.StreamResponse:
        if not readiness.ready:
            return unavailable(f"the daemon is not ready ({readiness.reason}); retry shortly")
        declared = request.headers.get("Content-Type")
        if declared and request.content_type != "application/json" and not request.content_type.endswith("+json"):
            return json_error(415, f"send JSON with Content-Type: application/json, not {request.content_type}")
        if request.content_length is not None and request.content_length > feedback.max_body_bytes:
            return json_error(413, f"feedback body of {request.content_length} bytes exceeds feedback.max_body_bytes ({feedback.max_body_bytes})")
        try:
            async with pace.watch(request):
                body = await read_body(request, feedback.max_body_bytes)
        except BodyTooLarge:
            return json_error(413, f"feedback body exceeds feedback.max_body_bytes ({feedback.max_body_bytes})")
        except BodyTooSlow as slow:
            return await answer_and_close(request, json_error(408, str(slow)))
        try:
            document = json.loads(body)
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, an integer over 4300 digits
            return json_error(400, f"the body is not valid JSON: {error}")
        except RecursionError:
            return json_error(400, "the body is not valid JSON: nested too deeply")
        single = isinstance(document, dict)
        if not single and not isinstance(document, list):
            return json_error(422, 'send {"id": ..., "label": ...} or a list of such objects')
        records = [document] if single else document
        if len(records) > feedback.max_records:
            return json_error(413, f"{len(records)} records exceed feedback.max_records ({feedback.max_records})")
        results: list[Verdict | None] = []
        valid: list[tuple[str, str]] = []
        for record in records:
            parsed = _parse_record(record)
            if isinstance(parsed, str):
                results.append(Verdict(_record_id(record), "invalid", reason=parsed))
            else:
                results.append(None)
                valid.append(parsed)
        invalid = sum(1 for result in results if result is not None)
        if invalid:
            metrics.feedback.labels("invalid").inc(invalid)
        verdicts: list[Verdict] | None = []
        if valid:
            reply_to = transport.reply_address()
            try:
                await transport.publish(LabelBatch(valid, reply_to, origin))
            except TransportUnavailable as error:
                return unavailable(f"the labels could not be put in the stream ({error}); retry shortly")
            verdicts = await transport.verdicts(reply_to, settings.bus.reply_timeout_seconds)
            if verdicts is None or len(verdicts) != len(valid):
                verdicts = [Verdict(prediction_id, "accepted", reason=_ACCEPTED) for prediction_id, _ in valid]
        joined = iter(verdicts)
        final = [result if result is not None else next(joined) for result in results]
        if single:
            status, answer = _STATUS.get(final[0].outcome, 200), final[0].to_json()
            if status >= 400:
                answer.update(error=answer.get("reason", final[0].outcome), status=status)
            return web.json_response(answer, status=status)
        counts: dict[str, int] = {}
        for result in final:
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
        return web.json_response({"results": [result.to_json() for result in final], "counts": counts})

    async def get_detectors(request: web.Request) -> web.Response:
        status = await detector_status()
        if status is None:
            return unavailable("no monitor has published the detectors' state yet (starting, or none is "
                               "running on this stream); retry shortly")
        return web.json_response(detectors_body(status))

    app.router.add_post("/v1/feedback", post_feedback)
    app.router.add_get("/v1/detectors", get_detectors)


def detectors_body(status: dict[str, Any]) -> dict[str, Any]:
    """The body of ``GET /v1/detectors`` from a monitor's status (the status page shows the same)."""
    body: dict[str, Any] = {"detectors": [_finite(state) for state in status.get("detectors", [])]}
    if "reference" in status:
        body["reference"] = status["reference"]
    if "estimated_accuracy" in status:
        body["estimated_accuracy"] = status["estimated_accuracy"]
    return body


_ACCEPTED = ("in the stream; the monitor did not answer within bus.reply_timeout_seconds, so its verdict "
             "is counted in monitord_feedback_total on the monitor instead")


def _parse_record(record: Any) -> tuple[str, str] | str:
    """``(id, label)``, or the reason the record cannot be used."""
    if not isinstance(record, dict):
        return f'each record must be an object like {{"id": "...", "label": "..."}}, got {type(record).__name__}'
    missing = [key for key in ("id", "label") if key not in record]
    if missing:
        return f"missing {' and '.join(missing)}"
    prediction_id, label = record["id"], record["label"]
    if not isinstance(prediction_id, str) or not prediction_id:
        return "id must be a non-empty string (the id POST /v1/predict returned)"
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        return "label must be a class name (a string; an integer is read as its decimal name)"
    return prediction_id, str(label)


def _record_id(record: Any) -> str:
    if isinstance(record, dict) and isinstance(record.get("id"), str):
        return record["id"]
    return ""


def _finite(state: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: such readings are reported as null."""
    return {
        key: (None if isinstance(value, float) and not math.isfinite(value) else value)
        for key, value in state.items()
    }
