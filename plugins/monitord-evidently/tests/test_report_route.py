"""``GET /v1/report`` through the real daemon: behind the token, HTML or JSON, clear errors,
and a 501 naming the plugin when it is not loaded."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from monitord.predictions_log import predictions_log_path
from monitord_torchvision.digits import digit_png_bytes, held_out_digits

from daemon_process import DaemonProcess, free_port, post_multipart, wait_for

TOKEN = "report-token-0123456789"
IMAGES = 64


def get(url: str, token: str | None = TOKEN, accept: str | None = None) -> tuple[int, str, str]:
    """``(status, content type, body)`` of a GET."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if accept:
        headers["Accept"] = accept
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=120) as response:
            return response.status, response.headers.get_content_type(), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read().decode()


async def post_digits(url: str) -> None:
    import aiohttp

    images, _ = held_out_digits()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        await post_multipart(session, url, [digit_png_bytes(image) for image in images[:IMAGES]])


def logged_lines(state: Path) -> int:
    path = predictions_log_path(state)
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    process = DaemonProcess(tmp_path_factory.mktemp("report"), free_port(), artifact=digits_artifact,
                            extra_settings='sources = ["http"]\n', env={"MONITORD_HTTP__TOKEN": TOKEN})
    process.start()
    asyncio.run(post_digits(process.url))
    wait_for(lambda: logged_lines(process.state) >= IMAGES, timeout=60,
             message=f"{IMAGES} lines in the predictions log:\n{process.log()}")
    yield process
    process.kill()


def test_the_report_is_behind_the_token(served: DaemonProcess) -> None:
    status, _, body = get(served.url + "/v1/report", token=None)
    assert status == 401 and "bearer token" in body


def test_the_report_page_is_html(served: DaemonProcess) -> None:
    status, content_type, body = get(served.url + f"/v1/report?window={IMAGES}")
    assert (status, content_type) == (200, "text/html"), body[:500]
    assert "<h1>monitord report</h1>" in body and f"{IMAGES} predictions from" in body
    assert "drawDashboard" in body  # Evidently's own report is in the page


def test_the_report_as_json_by_query_or_by_accept(served: DaemonProcess) -> None:
    asked = ((f"/v1/report?window={IMAGES}&format=json", None), (f"/v1/report?window={IMAGES}", "application/json"))
    for url, accept in asked:
        status, content_type, body = get(served.url + url, accept=accept)
        assert (status, content_type) == (200, "application/json"), body[:500]
        document = json.loads(body)
        assert document["window"]["rows"] == IMAGES and document["drifted"] == []
        assert document["reference"]["samples"] == 360
    # A time window: every image came within the last hour.
    status, _, body = get(served.url + "/v1/report?window=1h&format=json")
    assert status == 200 and json.loads(body)["window"]["rows"] == IMAGES


def test_bad_requests_say_what_to_send(served: DaemonProcess) -> None:
    status, _, body = get(served.url + "/v1/report?window=forever")
    assert status == 400 and "neither a count nor a duration" in json.loads(body)["error"]
    status, _, body = get(served.url + "/v1/report?window=10")
    assert status == 409 and "needs at least 30" in json.loads(body)["error"]
    status, _, body = get(served.url + "/v1/report?format=pdf")
    assert status == 400 and "not html or json" in json.loads(body)["error"]


def test_without_the_plugin_the_route_says_what_to_install(tmp_path: Path, digits_artifact: Path) -> None:
    process = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact, extra_settings='sources = ["http"]\n',
                            env={"MONITORD_LOAD_PLUGINS": "monitord-torchvision,monitord-drift"})
    try:
        process.start()
        status, _, body = get(process.url + "/v1/report", token=None)
        assert status == 501
        assert "monitord-evidently" in json.loads(body)["error"] and "pip install" in json.loads(body)["error"]
    finally:
        process.kill()
