"""HTTP ingest end to end: the real daemon over real HTTP."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp.multipart import BodyPartReader
from multidict import CIMultiDict

from daemon_process import DaemonProcess, free_port
from digit_files import held_out_pngs

from monitord.builtin.http_source import part_filename

MAX_BODY = 200_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    process = DaemonProcess(
        tmp_path_factory.mktemp("http"),
        free_port(),
        artifact=digits_artifact,
        extra_settings=f'sources = ["http"]\n[http]\nmax_body_bytes = {MAX_BODY}\nmax_parts = 100\n',
    )
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


def form(parts: list[tuple[str, bytes, str]]) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for filename, body, content_type in parts:
        data.add_field("image", body, filename=filename, content_type=content_type)
    return data


async def post(server: DaemonProcess, data, path: str = "/v1/predict", **kwargs) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + path, data=data, **kwargs) as response:
            return response.status, await response.json(), dict(response.headers)


async def test_multipart_of_64_returns_64_predictions_in_order(server: DaemonProcess) -> None:
    digits = held_out_pngs(64)
    status, body, _ = await post(server, form([(f"{i}-{label}.png", png, "image/png") for i, (label, png) in enumerate(digits)]),
                                 params={"id": "batch7"})
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == 64 and body["count"] == 64 and body["errors"] == 0
    assert [p["filename"] for p in predictions] == [f"{i}-{label}.png" for i, (label, _) in enumerate(digits)]
    assert [p["id"] for p in predictions] == [f"batch7-{i}" for i in range(64)]
    correct = sum(p["class"] == str(label) for p, (label, _) in zip(predictions, digits))
    assert correct >= 0.9 * 64
    for p in predictions:
        assert p["class_index"] == int(p["class"]) and 0 < p["confidence"] <= 1


async def test_raw_body_returns_one_prediction(server: DaemonProcess) -> None:
    (label, png), = held_out_pngs(1)
    status, body, _ = await post(server, png, headers={"Content-Type": "image/png"}, params={"id": "one", "label": str(label)})
    assert status == 200, body
    assert body["id"] == "one" and body["label"] == str(label)
    assert set(body) >= {"class", "class_index", "confidence", "signals", "correct"}
    assert body["class"] == str(label) and body["correct"] is True


async def test_one_bad_part_among_good_ones_gets_its_own_error(server: DaemonProcess) -> None:
    digits = held_out_pngs(3)
    parts = [("a.png", digits[0][1], "image/png"), ("b.png", b"garbage bytes", "image/png"), ("c.png", digits[2][1], "image/png")]
    status, body, _ = await post(server, form(parts))
    assert status == 200 and body["errors"] == 1
    good, bad, also_good = body["predictions"]
    assert "class" in good and "class" in also_good
    assert bad["status"] == 422 and "not a recognised image format" in bad["error"]


async def test_undecodable_raw_image_is_422_with_a_reason(server: DaemonProcess) -> None:
    status, body, _ = await post(server, b"\xff\xd8\xff\xe0 truncated jpeg", headers={"Content-Type": "image/jpeg"})
    assert status == 422
    assert body["status"] == 422 and body["error"]


async def test_unsupported_media_type_is_415(server: DaemonProcess) -> None:
    status, body, _ = await post(server, b'{"image": "no"}', headers={"Content-Type": "application/json"})
    assert status == 415
    assert "unsupported media type 'application/json'" in body["error"]


async def test_body_over_the_limit_is_413(server: DaemonProcess) -> None:
    status, body, _ = await post(server, b"\0" * (MAX_BODY + 1), headers={"Content-Type": "image/png"})
    assert status == 413 and "http.max_body_bytes" in body["error"]
    big_parts = [(f"{i}.png", b"\0" * (MAX_BODY // 3), "image/png") for i in range(4)]
    status, body, _ = await post(server, form(big_parts))
    assert status == 413


async def test_too_many_parts_is_413(server: DaemonProcess) -> None:
    (_, png), = held_out_pngs(1)
    status, body, _ = await post(server, form([(f"{i}.png", png, "image/png") for i in range(101)]))
    assert status == 413 and "http.max_parts" in body["error"]


async def test_health_readiness_metrics_and_json_404(server: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200
        async with session.get(server.url + "/readyz") as response:
            assert response.status == 200 and (await response.json())["ready"] is True
        async with session.get(server.url + "/nope") as response:
            assert response.status == 404 and (await response.json())["status"] == 404
        async with session.get(server.url + "/metrics") as response:
            text = await response.text()
            assert response.headers["Content-Type"].startswith("text/plain")
    for name in ("monitord_images_total", "monitord_predictions_total", "monitord_prediction_confidence_bucket",
                 "monitord_inference_duration_seconds_bucket", "monitord_batch_size_bucket",
                 "monitord_end_to_end_duration_seconds_bucket", "monitord_queue_depth", "monitord_build_info"):
        assert name in text, name
    build = [line for line in text.splitlines() if line.startswith("monitord_build_info{")]
    assert len(build) == 1 and 'model="digits_cnn"' in build[0] and 'device="cpu"' in build[0], build
    assert server.metric("monitord_images_total", source="http", outcome="rejected") >= 3


@pytest.mark.parametrize("header, expected", [
    ('form-data; name="image"; filename="0.png"', "0.png"),
    ('form-data; name="image"; filename="ünï code.png"', "ünï code.png"),
    ('form-data; name="image"; filename="a\\"b.png"', 'a"b.png'),  # an escape: aiohttp's parser
    ("form-data; name=image; filename=x.png", "x.png"),  # unquoted: aiohttp's parser
    ("form-data; name=\"image\"; filename*=UTF-8''%C3%BC.png", "ü.png"),  # RFC 5987: aiohttp's parser
    ('form-data; name="image"', None),
])
def test_part_filename_reads_the_plain_form_fast_and_defers_the_rest_to_aiohttp(header: str, expected) -> None:
    part = BodyPartReader(b"--x", CIMultiDict({"Content-Disposition": header}), None)  # type: ignore[arg-type]
    assert part.filename == expected
    assert part_filename(part) == expected
