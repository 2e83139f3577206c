"""Bad input over HTTP: every refusal is JSON with a reason, nothing is counted wrong, the daemon goes on.

The real daemon runs as a subprocess, started once for the module; each test measures
the ``monitord_images_total`` counters before and after what it sends.
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from bad_inputs import Case, by_expectation, corpus
from daemon_process import DaemonProcess, free_port
from digit_files import held_out_pngs

MAX_BODY = 300_000
MAX_PARTS = 80
FEEDBACK_MAX_BODY = 8192
FEEDBACK_MAX_RECORDS = 5
SETTINGS = f"""sources = ["http"]
[http]
max_body_bytes = {MAX_BODY}
max_parts = {MAX_PARTS}
[feedback]
max_body_bytes = {FEEDBACK_MAX_BODY}
max_records = {FEEDBACK_MAX_RECORDS}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    process = DaemonProcess(tmp_path_factory.mktemp("bad-http"), free_port(), artifact=digits_artifact,
                            extra_settings=SETTINGS)
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


class Answer:
    """One HTTP answer: status, content type and the body parsed as JSON (None if it is not JSON)."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status, self.content_type, self.raw = status, content_type, body
        try:
            self.json: Any = json.loads(body)
        except ValueError:
            self.json = None

    def error(self, status: int, fragment: str = "") -> str:
        """Assert a JSON error with ``status`` whose reason contains ``fragment``; return the reason."""
        assert self.status == status, (self.status, self.raw[:500])
        assert self.content_type == "application/json", (self.content_type, self.raw[:500])
        assert isinstance(self.json, dict) and self.json.get("status") == status, self.raw[:500]
        reason = self.json.get("error")
        assert isinstance(reason, str) and reason, self.raw[:500]
        assert fragment.lower() in reason.lower(), (fragment, reason)
        return reason


async def send(server: DaemonProcess, path: str, data: Any = None, content_type: str | None = None,
               **kwargs: Any) -> Answer:
    """POST ``data``; with ``content_type`` None and bytes, no Content-Type header at all."""
    headers = dict(kwargs.pop("headers", {}))
    skip: tuple[str, ...] = ()
    if content_type is not None:
        headers["Content-Type"] = content_type
    elif isinstance(data, (bytes, str)) or data is None:
        skip = ("Content-Type",)
    async with aiohttp.ClientSession(skip_auto_headers=skip) as session:
        async with session.post(server.url + path, data=data, headers=headers, **kwargs) as response:
            return Answer(response.status, response.content_type, await response.read())


def content_type_of(case: Case) -> str:
    guessed, _ = mimetypes.guess_type(case.name)
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"


def form(parts: list[tuple[str, bytes, str]]) -> aiohttp.FormData:
    data = aiohttp.FormData(quote_fields=False)  # file names in raw UTF-8, as browsers send them
    for filename, body, content_type in parts:
        data.add_field("image", body, filename=filename, content_type=content_type)
    return data


def counted(server: DaemonProcess, outcome: str) -> float:
    return server.metric("monitord_images_total", source="http", outcome=outcome)


def http_cases() -> list[Case]:
    return [case for case in corpus() if case.http]


# -- the corpus ---------------------------------------------------------------------------


async def test_corpus_as_raw_bodies_422_with_the_reason_or_a_prediction(server: DaemonProcess) -> None:
    cases = http_cases()
    assert len(by_expectation(cases, "rejected")) >= 15 and len(by_expectation(cases, "ok")) >= 20
    rejected, ok = counted(server, "rejected"), counted(server, "ok")
    for case in cases:
        answer = await send(server, "/v1/predict", case.data, content_type_of(case), params={"id": f"raw-{case.name}"})
        if case.expect == "rejected":
            answer.error(422, case.reason)
            assert answer.json["id"] == f"raw-{case.name}"
        else:
            assert answer.status == 200, (case.name, answer.raw[:300])
            assert answer.json["id"] == f"raw-{case.name}" and answer.json["class"] in {str(d) for d in range(10)}
    assert counted(server, "rejected") - rejected == len(by_expectation(cases, "rejected"))
    assert counted(server, "ok") - ok == len(by_expectation(cases, "ok"))
    assert counted(server, "error") == 0


async def test_corpus_as_one_multipart_batch_each_part_gets_its_own_answer(server: DaemonProcess) -> None:
    cases = http_cases()
    digits = held_out_pngs(5)
    parts = [(case.name, case.data or b"", content_type_of(case)) for case in cases]
    parts += [(f"digit-{label}.png", png, "image/png") for label, png in digits]
    assert len(parts) <= MAX_PARTS
    rejected = counted(server, "rejected")
    answer = await send(server, "/v1/predict", form(parts), params={"id": "batch"})
    assert answer.status == 200, answer.raw[:500]
    bad = by_expectation(cases, "rejected")
    assert answer.json["count"] == len(parts) and answer.json["errors"] == len(bad)
    records = answer.json["predictions"]
    assert [record["filename"] for record in records] == [name for name, _, _ in parts]  # order kept
    assert [record["id"] for record in records] == [f"batch-{index}" for index in range(len(parts))]
    for case, record in zip(cases, records):
        if case.expect == "rejected":
            assert record["status"] == 422 and case.reason.lower() in record["error"].lower(), (case.name, record)
        else:
            assert "error" not in record and "class" in record, (case.name, record)
    assert all("class" in record for record in records[len(cases):])
    assert counted(server, "rejected") - rejected == len(bad)


async def test_one_executable_among_good_parts_fails_alone(server: DaemonProcess) -> None:
    (_, a), (_, b) = held_out_pngs(2)
    elf = next(case for case in corpus() if case.name == "program.jpg")
    answer = await send(server, "/v1/predict", form([("a.png", a, "image/png"), ("program.jpg", elf.data or b"",
                                                     "image/jpeg"), ("b.png", b, "image/png")]))
    assert answer.status == 200 and answer.json["errors"] == 1
    first, bad, last = answer.json["predictions"]
    assert "class" in first and "class" in last
    assert bad["status"] == 422 and "not a recognised image format" in bad["error"] and bad["filename"] == "program.jpg"


# -- limits and media types --------------------------------------------------------------


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def test_bodies_over_the_limit_are_413(server: DaemonProcess) -> None:
    rejected = counted(server, "rejected")
    (await send(server, "/v1/predict", b"\0" * (MAX_BODY + 1), "image/png")).error(413, "http.max_body_bytes")
    # Without Content-Length (chunked): refused once the limit is passed while reading.
    (await send(server, "/v1/predict", chunks(b"\0" * (MAX_BODY + 70_000)), "image/png")).error(413, "max_body_bytes")
    big = [(f"{index}.png", b"\0" * (MAX_BODY // 3), "image/png") for index in range(4)]
    (await send(server, "/v1/predict", form(big))).error(413)
    (_, png), = held_out_pngs(1)
    (await send(server, "/v1/predict", form([(f"{i}.png", png, "image/png") for i in range(MAX_PARTS + 1)]))).error(
        413, "http.max_parts")
    assert counted(server, "rejected") - rejected == 4


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "application/x-www-form-urlencoded",
                                          "text/html; charset=utf-8", "video/mp4"])
async def test_wrong_media_type_is_415(server: DaemonProcess, content_type: str) -> None:
    (_, png), = held_out_pngs(1)
    reason = (await send(server, "/v1/predict", png, content_type)).error(415, "unsupported media type")
    assert content_type.split(";")[0] in reason


async def test_missing_content_type_is_read_as_octet_stream(server: DaemonProcess) -> None:
    """RFC 9110 §8.3: without Content-Type the body may be taken as application/octet-stream.

    So the image's own bytes decide: a PNG is classified, garbage is a 422 with a reason.
    """
    (_, png), = held_out_pngs(1)
    answer = await send(server, "/v1/predict", png, content_type=None)
    assert answer.status == 200 and "class" in answer.json, answer.raw[:300]
    (await send(server, "/v1/predict", b"no type and no image", content_type=None)).error(422, "not a recognised")


MALFORMED_MULTIPART = {
    "no boundary": ("multipart/form-data", b"--x\r\n\r\nabc\r\n--x--\r\n", "boundary"),
    "boundary never appears": ("multipart/form-data; boundary=abc", b"just some bytes", "boundary"),
    "cut before the end": ("multipart/form-data; boundary=abc",
                           b"--abc\r\nContent-Disposition: form-data; name=a\r\n\r\nxx", ""),
    "no parts at all": ("multipart/form-data; boundary=abc", b"--abc--\r\n", "no parts"),
    "empty body": ("multipart/form-data; boundary=abc", b"", ""),
    "nested multipart": (
        "multipart/form-data; boundary=outer",
        b"--outer\r\nContent-Type: multipart/mixed; boundary=inner\r\n\r\n"
        b"--inner\r\nContent-Type: image/png\r\n\r\nxx\r\n--inner--\r\n--outer--\r\n",
        "nested",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_MULTIPART))
async def test_malformed_multipart_is_400(server: DaemonProcess, case: str) -> None:
    content_type, body, fragment = MALFORMED_MULTIPART[case]
    rejected = counted(server, "rejected")
    (await send(server, "/v1/predict", body, content_type)).error(400, fragment)
    assert counted(server, "rejected") - rejected == 1


# -- feedback ------------------------------------------------------------------------------


async def feedback(server: DaemonProcess, body: bytes | Any, content_type: str | None = "application/json") -> Answer:
    return await send(server, "/v1/feedback", body, content_type)


async def test_feedback_refuses_malformed_oversized_and_mistyped_bodies(server: DaemonProcess) -> None:
    (await feedback(server, b'{"id": "x", "label": ')).error(400, "not valid JSON")
    (await feedback(server, b"\xff\xfe\x00garbage")).error(400, "not valid JSON")
    (await feedback(server, b"")).error(400, "not valid JSON")
    (await feedback(server, b'{"id": "x", "label": "3"}', "text/plain")).error(415, "application/json")
    big = json.dumps([{"id": "x" * 100, "label": "3"}] * 100).encode()
    assert len(big) > FEEDBACK_MAX_BODY
    (await feedback(server, big)).error(413, "feedback.max_body_bytes")
    (await feedback(server, chunks(big, 1000))).error(413, "feedback.max_body_bytes")  # chunked, no length
    records = json.dumps([{"id": f"r{i}", "label": "1"} for i in range(FEEDBACK_MAX_RECORDS + 1)]).encode()
    (await feedback(server, records)).error(413, "feedback.max_records")
    (await feedback(server, b'"just a string"')).error(422)
    (await feedback(server, b"42")).error(422)


async def test_feedback_answers_each_record_held_invalid_joined_duplicate(server: DaemonProcess) -> None:
    # Its prediction may still be on the way (in the inbox, in the stream): held, not refused.
    held = await feedback(server, b'{"id": "never-predicted", "label": "3"}')
    assert held.status == 202 and held.json["outcome"] == "held" and "feedback.grace_seconds" in held.json["reason"]
    invalid = await feedback(server, b'{"id": "x", "label": true}')
    assert invalid.status == 422 and invalid.json["outcome"] == "invalid" and "label" in invalid.json["reason"]
    missing = await feedback(server, b'{"label": "3"}')
    assert missing.status == 422 and "missing id" in missing.json["reason"]

    (_, png), = held_out_pngs(1)
    assert (await send(server, "/v1/predict", png, "image/png", params={"id": "fb-known"})).status == 200
    batch = await feedback(server, json.dumps([
        {"id": "fb-known", "label": "3"}, {"id": "fb-known", "label": "3"}, {"id": "nope", "label": "3"},
        {"id": "x", "label": "not-a-class"}, [1, 2],
    ]).encode())
    assert batch.status == 200, batch.raw[:300]
    assert [r["outcome"] for r in batch.json["results"]] == ["joined", "duplicate", "held", "invalid", "invalid"]
    assert batch.json["counts"] == {"joined": 1, "duplicate": 1, "held": 1, "invalid": 2}


async def test_the_daemon_is_healthy_and_classifies_afterwards(server: DaemonProcess) -> None:
    """After every refusal above, the daemon still does its job."""
    assert server.process is not None and server.process.poll() is None
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200
        async with session.get(server.url + "/readyz") as response:
            assert response.status == 200 and (await response.json())["ready"] is True
    (label, png), = held_out_pngs(1)
    answer = await send(server, "/v1/predict", png, "image/png")
    assert answer.status == 200 and answer.json["class"] == str(label)
    assert counted(server, "error") == 0
    log = server.log()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"id": "x", "label": ' + b"7" * 5000 + b"}"],
                         ids=["deeply-nested", "huge-integer"])
async def test_feedback_json_that_python_cannot_load_is_400(server: DaemonProcess, body: bytes) -> None:
    """Kept after the health check above: while the bug lasts it logs a traceback."""
    assert len(body) <= FEEDBACK_MAX_BODY
    answer = await feedback(server, body)
    async with aiohttp.ClientSession() as session:  # a 500 or not, the server goes on answering
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200
    answer.error(400, "not valid JSON")


async def test_multipart_part_with_an_unparsable_header_is_400(server: DaemonProcess) -> None:
    body = b"--abc\r\nContent-Disposition: form-d\xcd\xb2\x0bata; name=image\r\n\r\nxx\r\n--abc--\r\n"
    answer = await send(server, "/v1/predict", body, "multipart/form-data; boundary=abc")
    async with aiohttp.ClientSession() as session:  # a 500 or not, the server goes on answering
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200
    answer.error(400, "malformed multipart body")


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/feedback"])
async def test_unparsable_content_type_is_415(server: DaemonProcess, path: str) -> None:
    answer = await send(server, path, b"{}", "image/png; x*")
    async with aiohttp.ClientSession() as session:  # a 500 or not, the server goes on answering
        async with session.get(server.url + "/healthz") as response:
            assert response.status == 200
    answer.error(415, "Content-Type")
