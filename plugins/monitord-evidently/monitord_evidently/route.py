"""``GET /v1/report?window=…``: the report, computed in a thread, one at a time.

HTML by default; JSON with ``?format=json`` or ``Accept: application/json``. The window is
the command's (``--window``). A report takes seconds (Evidently's tests and its page), so
it never runs on the event loop, and a second request waits for the first rather than
doubling the load.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from monitord.http_server import json_error
from monitord.plugin_routes import RouteContext

from monitord_evidently.errors import ReportError
from monitord_evidently.window import DEFAULT_WINDOW, WindowError, parse_window


def report_route(context: RouteContext):
    settings = context.settings
    one_at_a_time = asyncio.Lock()

    async def get_report(request: web.Request) -> web.StreamResponse:
        wants = request.query.get("format")
        if wants is None:
            wants = "json" if "application/json" in request.headers.get("Accept", "") else "html"
        if wants not in ("html", "json"):
            return json_error(400, f"format {wants!r} is not html or json")
        try:
            window = parse_window(request.query.get("window", DEFAULT_WINDOW))
        except WindowError as error:
            return json_error(400, str(error))
        from monitord_evidently.report import report_for

        async with one_at_a_time:
            try:
                made = await asyncio.to_thread(report_for, Path(settings.state_dir), settings.model_artifact, window)
            except ReportError as error:
                return json_error(409, str(error))
        if wants == "json":
            return web.json_response(made.document)
        return web.Response(text=made.html, content_type="text/html")

    return get_report
