"""Fuzzing the two doors bad input comes through: the decoder and the HTTP handlers.

Decoding (in-process): arbitrary bytes and mutated valid PNG/JPEG/GIF/BMP/TIFF/WebP files
either decode to a loaded image within the pixel cap, or raise ``DecodeError``; nothing
else may escape, because the pipeline files anything else under outcome ``error`` (our
fault) instead of ``rejected`` (the input's). The model's preprocessing is fuzzed behind
it the same way (``ValueError`` only).

HTTP (the real daemon, started once for the module): raw bodies, content types, query
strings, multipart bodies and feedback JSON. Every answer is JSON, below 500 (503 and 429
are documented answers to load, allowed), an error carries its reason and status, and
the server keeps answering.

Deterministic and bounded: ``derandomize=True`` with no example database, fixed
``max_examples``, no deadline (a loaded CI machine must not make a test flaky).
"""

from __future__ import annotations

import http.client
import json
import string
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bad_inputs import animated_gif, cmyk_jpeg, digit_like, encode, exif_rotated_jpeg, gray16_png
from daemon_process import DaemonProcess, free_port
from digit_files import held_out_pngs
from monitord.decode import DecodeError, decode_image, read_payload
from monitord_torchvision.preprocess import PreprocessSpec, preprocess_image

FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_PIXELS = 1_000_000
SPEC = PreprocessSpec(input_size=(8, 8), channels=1, mean=(0.3,), std=(0.4,))


def seeds() -> list[bytes]:
    """Valid files of every format we take, small enough to mutate quickly."""
    digit = digit_like(16)
    palette = digit.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return [
        encode(digit, "PNG"),
        encode(digit.convert("RGBA"), "PNG"),
        encode(palette, "PNG", transparency=0),
        gray16_png(),
        encode(digit.convert("RGB"), "JPEG", quality=80),
        encode(digit, "JPEG", progressive=True),
        cmyk_jpeg(),
        exif_rotated_jpeg(6),
        encode(digit, "GIF"),
        animated_gif(),
        encode(digit, "BMP"),
        encode(digit, "TIFF"),
        encode(digit.convert("RGB"), "TIFF", compression="tiff_lzw"),
        encode(digit.convert("RGB"), "WEBP"),
    ]


SEEDS = seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid file with a few byte-level mutations, biased towards the header where sizes live."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        last = len(data) - 1
        position = draw(st.one_of(st.integers(0, min(last, 48)), st.integers(0, last)))
        operation = draw(st.sampled_from(["flip", "extreme", "insert", "delete", "truncate", "repeat"]))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "extreme":
            data[position] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position:position + draw(st.integers(1, 32))]
        elif operation == "truncate":
            del data[position:]
        else:
            data[position:position] = data[position:position + draw(st.integers(1, 64))]
    return bytes(data)


def check_decode(data: bytes) -> None:
    """The decode contract: a loaded image within the cap, or DecodeError; then ValueError only."""
    try:
        image = decode_image(data, MAX_PIXELS)
    except DecodeError as error:
        assert str(error)
        return
    assert isinstance(image, Image.Image)
    assert 0 < image.width * image.height <= MAX_PIXELS
    image.getpixel((0, 0))  # loaded already: nothing lazy left to fail later
    try:
        array = preprocess_image(image, SPEC)
    except ValueError as error:
        assert str(error)
        return
    assert array.shape == SPEC.shape and np.isfinite(array).all()


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
@settings(FUZZ, max_examples=1000)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    check_decode(data)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PIL.Image.DecompressionBombWarning")
@settings(FUZZ, max_examples=1500)
@given(mutated_images())
def test_mutated_images_decode_or_raise_decode_error(data: bytes) -> None:
    check_decode(data)


@settings(FUZZ, max_examples=50)
@given(st.binary(max_size=4096))
def test_read_payload_returns_exactly_the_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    assert read_payload(data) is data
    path = tmp_path_factory.mktemp("payload") / "image.bin"
    path.write_bytes(data)
    assert read_payload(path) == data


# -- HTTP -------------------------------------------------------------------------------

#: Answers the daemon gives under load or while starting: documented, never a crash.
LOAD_STATUSES = {429, 503}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    process = DaemonProcess(
        tmp_path_factory.mktemp("fuzz-http"), free_port(), artifact=digits_artifact,
        extra_settings=('sources = ["http"]\n[http]\nmax_body_bytes = 65536\nmax_parts = 16\n'
                        f"[pipeline]\nmax_image_pixels = {MAX_PIXELS}\n"
                        "[feedback]\nmax_body_bytes = 16384\nmax_records = 50\n"),
    )
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


def request(server: DaemonProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One POST on a fresh connection; the answer must be JSON, and an error must say why."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Length": str(len(body)), **headers})
        response = connection.getresponse()
        raw = response.read()
        status, content_type = response.status, response.getheader("Content-Type", "")
    finally:
        connection.close()
    assert status < 500 or status in LOAD_STATUSES, (status, raw[:300])
    assert content_type.startswith("application/json"), (status, content_type, raw[:300])
    document = json.loads(raw)
    if status >= 400:
        assert isinstance(document, dict), document
        if path.startswith("/v1/feedback") and "outcome" in document:
            # One feedback record's outcome (404 unknown, 409, 410, 422 invalid): its reason is "reason".
            assert isinstance(document["reason"], str) and document["reason"], document
        else:
            assert document["status"] == status and isinstance(document["error"], str) and document["error"]
    return status, document


def assert_alive(server: DaemonProcess) -> None:
    assert server.process is not None and server.process.poll() is None, server.log()[-3000:]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


HEADER_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " /;=+-._*\"',", max_size=60)
CONTENT_TYPES = st.one_of(
    st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp", "application/octet-stream", "image/*",
                     "text/plain", "application/json", "multipart/form-data", "multipart/mixed; boundary=x",
                     "image/png; charset=utf-8", "IMAGE/PNG", ""]),
    HEADER_TEXT,
)
QUERY_VALUES = st.text(max_size=40)  # any Unicode, surrogates included: quoted with errors="surrogatepass"
QUERIES = st.dictionaries(st.sampled_from(["id", "label", "x", ""]), QUERY_VALUES, max_size=3)


def with_query(path: str, query: dict[str, str]) -> str:
    if not query:
        return path
    pairs = [(urllib.parse.quote(key), urllib.parse.quote(value, safe="", errors="surrogatepass"))
             for key, value in query.items()]
    return path + "?" + "&".join(f"{key}={value}" for key, value in pairs)


@settings(FUZZ, max_examples=300)
@given(body=st.one_of(st.binary(max_size=1024), mutated_images()), content_type=CONTENT_TYPES, query=QUERIES)
def test_predict_raw_bodies_always_answer_json(server: DaemonProcess, body: bytes, content_type: str,
                                               query: dict[str, str]) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, document = request(server, with_query("/v1/predict", query), body, headers)
    if status == 200:
        assert "class" in document and 0 <= document["confidence"] <= 1
        if query.get("id"):
            assert document["id"] == query["id"] or "\ufffd" in document["id"]  # undecodable bytes replaced


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A multipart body built part by part, then possibly damaged; returns (Content-Type, body)."""
    boundary = draw(st.text(alphabet=string.ascii_letters + string.digits + "'()+_,-./:=?", min_size=1, max_size=40))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        payload = draw(st.one_of(st.binary(max_size=256), mutated_images(), st.sampled_from(SEEDS[:3])))
        headers = draw(st.sampled_from([
            b'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n',
            b'Content-Disposition: form-data; name="image"\r\n',
            b"Content-Type: multipart/mixed; boundary=inner\r\n",
            b"",
            b"Content-Disposition: \xff\xfe broken\r\n",
        ]))
        parts.append(b"--" + boundary.encode() + b"\r\n" + headers + b"\r\n" + payload + b"\r\n")
    body = b"".join(parts) + (b"--" + boundary.encode() + b"--\r\n" if draw(st.booleans()) else b"")
    damage = draw(st.sampled_from(["none", "truncate", "insert", "other boundary"]))
    if damage == "truncate" and body:
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif damage == "insert":
        position = draw(st.integers(0, len(body)))
        body = body[:position] + draw(st.binary(min_size=1, max_size=32)) + body[position:]
    declared = draw(st.one_of(st.just(boundary), HEADER_TEXT)) if damage == "other boundary" else boundary
    quoted = draw(st.booleans())
    return f'multipart/form-data; boundary={json.dumps(declared) if quoted else declared}', body


@settings(FUZZ, max_examples=200)
@given(multipart_bodies())
def test_predict_multipart_bodies_always_answer_json(server: DaemonProcess, multipart: tuple[str, bytes]) -> None:
    content_type, body = multipart
    status, document = request(server, "/v1/predict", body, {"Content-Type": content_type})
    if status == 200:
        assert document["count"] == len(document["predictions"]) >= 1
        for record in document["predictions"]:
            assert "class" in record or (record["status"] in (422, 500) and record["error"])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
RECORDS = st.fixed_dictionaries(
    {}, optional={"id": st.one_of(st.text(max_size=20), JSON_VALUES), "label": st.one_of(
        st.sampled_from([str(d) for d in range(10)]), st.integers(-5, 15), JSON_VALUES)},
)
FEEDBACK_BODIES = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), st.one_of(RECORDS, st.lists(RECORDS, max_size=60), JSON_VALUES)),
    st.binary(max_size=512),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@settings(FUZZ, max_examples=300)
@given(body=FEEDBACK_BODIES, content_type=st.one_of(st.just("application/json"), CONTENT_TYPES))
def test_feedback_bodies_always_answer_json(server: DaemonProcess, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    status, document = request(server, "/v1/feedback", body, headers)
    assert status in {200, 202, 400, 404, 409, 410, 413, 415, 422}, (status, document)
    if status == 200 and "results" in document:
        assert sum(document["counts"].values()) == len(document["results"])


def test_the_daemon_still_classifies_after_the_fuzzing(server: DaemonProcess) -> None:
    """Runs after the HTTP fuzz tests: alive and still right on a digit."""
    assert_alive(server)
    (label, png), = held_out_pngs(1)
    status, document = request(server, "/v1/predict", png, {"Content-Type": "image/png"})
    assert status == 200 and document["class"] == str(label)
    assert server.metric("monitord_images_total", source="http", outcome="error") == 0


# -- atheris (optional: coverage-guided, when installed) --------------------------------------

ATHERIS_HARNESS = """
import sys
import atheris
with atheris.instrument_imports(include=["monitord", "PIL"]):
    from monitord.decode import DecodeError, decode_image

def one_input(data: bytes) -> None:
    try:
        image = decode_image(data, 1_000_000)
    except DecodeError:
        return
    assert 0 < image.width * image.height <= 1_000_000

atheris.Setup(sys.argv, one_input)
atheris.Fuzz()
"""


def test_atheris_finds_nothing_in_decode(tmp_path: Path) -> None:
    """libFuzzer from a fixed seed and corpus, for a fixed number of runs, in a child process."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(SEEDS):
        (corpus / f"seed-{index}").write_bytes(seed)
    harness = tmp_path / "harness.py"
    harness.write_text(ATHERIS_HARNESS)
    result = subprocess.run(
        [sys.executable, str(harness), "-runs=5000", "-seed=1", "-max_len=4096", "-rss_limit_mb=2048", str(corpus)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
