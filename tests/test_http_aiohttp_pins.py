"""Pins for the aiohttp behaviour monitord.http_server relies on beyond aiohttp's documentation.

Checked against aiohttp 3.14.5. If one of these fails after an aiohttp upgrade, the
docstrings of ``GuardedRequestHandler`` and ``PaceWatch`` say what depends on it. The
server here is the daemon's own application and runner, in process, so the log can be
captured whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from monitord.http_server import MAX_LINE_BYTES, Readiness, build_app, make_runner
from monitord.metrics import Metrics
from monitord.settings import HttpSettings

TOKEN = "pin-token-0123456789"
MARKER = "PIN-MARKER-51c2"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int, web.Application]]:
    app = build_app(Metrics(), Readiness(True, "ready"), 1 << 20, token=TOKEN)
    total_bytes: list[int] = []

    async def count(request: web.Request) -> web.Response:
        """Reads the body in small pieces; answers what ``total_bytes`` said after each."""
        while await request.content.read(1000):
            total_bytes.append(request.content.total_bytes)
        return web.json_response({"total_bytes": total_bytes})

    app.router.add_post("/v1/count", count)
    runner = make_runner(app, HttpSettings())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield "127.0.0.1", port, app
    finally:
        await runner.cleanup()


async def exchange(host: str, port: int, data: bytes) -> tuple[int, str, dict]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        answer = await asyncio.wait_for(reader.read(), 10)  # the server closes after a refusal
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers["content-type"], json.loads(body)


async def test_a_request_the_parser_refuses_reaches_handle_error(
    server: tuple[str, int, web.Application], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answers a head its parser refuses through ``RequestHandler.handle_error``,
    with the ``HttpProcessingError`` as ``exc``: GuardedRequestHandler's override answers
    JSON and logs no byte of the request."""
    host, port, _ = server
    caplog.set_level(logging.DEBUG)
    url = f"/v1/detectors?token={TOKEN}&m={MARKER}&pad={'x' * MAX_LINE_BYTES}"
    status, content_type, body = await exchange(host, port, f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (status, body["status"]) == (414, 414) and content_type.startswith("application/json")
    status, _, body = await exchange(host, port, f"GET * HTTP/1.1\r\nHost: {MARKER}\r\n\r\n".encode())
    assert status == 400 and "request target" in body["error"]
    assert "refused a request" in caplog.text  # our line, at DEBUG, in place of aiohttp's
    assert TOKEN not in caplog.text and MARKER not in caplog.text, caplog.text


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_stream_reader_total_bytes_counts_the_body_bytes_received(
    server: tuple[str, int, web.Application], chunked: bool
) -> None:
    """``StreamReader.total_bytes``: the body bytes fed to the stream so far, whether or
    not read yet (PaceWatch's measure of how much a client has sent)."""
    host, port, _ = server
    body = bytes(range(256)) * 40

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]

    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{host}:{port}/v1/count", data=pieces() if chunked else body,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            counts = (await response.json())["total_bytes"]
    assert counts[-1] == len(body) and counts == sorted(counts), counts
