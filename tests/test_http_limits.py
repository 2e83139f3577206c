"""HTTP hardening against the real daemon over real sockets: slow clients, the concurrency
cap and the pipeline's byte budget.

Slow clients are raw sockets, so the test controls every byte and its timing. The cap and
the budget are provoked deterministically with a ``gated`` model (written into a temporary
plugin distribution below): its preprocessing blocks while a gate file exists, so accepted
images stay "accepted but not decoded" for as long as the test wants.
"""

from __future__ import annotations

import io
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import held_out_pngs
from gated_model import gated_model, gated_model_settings

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
MAX_CONCURRENT = 3


# -- raw HTTP over a socket ----------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class RawConnection:
    """One TCP connection on which the test writes exactly the bytes it wants, when it wants."""

    port: int
    timeout: float = 15.0
    sock: socket.socket = field(init=False)
    buffer: bytes = b""

    def __post_init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> RawResponse:
        """The next response (an interim ``100 Continue`` included), body read by Content-Length."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a whole response head; got {self.buffer!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed in the middle of a response body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return RawResponse(int(status_line.split()[1]), headers, body)

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection (EOF or reset) before the socket timeout."""
        try:
            return not self._fill() and not self.buffer
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def request_head(path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Trickle:
    """What became of a client that sent its request head one byte at a time."""

    sent: int
    total: int
    received: bytes
    closed: bool


def trickle_head(port: int, head: bytes, interval: float = 0.5, give_up: float = 20.0) -> Trickle:
    """Send ``head`` one byte every ``interval`` s until the server answers or closes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sent, received, closed = 0, b"", False
    deadline = time.monotonic() + give_up
    try:
        while sent < len(head) and time.monotonic() < deadline:
            try:
                sock.sendall(head[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sent += 1
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                while True:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    if not chunk:
                        closed = True
                        break
                    received += chunk
                break
    finally:
        sock.close()
    return Trickle(sent, len(head), received, closed)


def parse_raw(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return RawResponse(int(status_line.split()[1]), headers, body)


def post(url: str, body: bytes, content_type: str = "image/png", timeout: float = 30) -> tuple[int, dict, dict]:
    """POST with urllib; returns status, JSON body and headers whatever the status."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def get_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


def multipart(parts: list[bytes], boundary: str = "limits-test-boundary") -> tuple[bytes, str]:
    chunks = []
    for index, part in enumerate(parts):
        chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                      f"filename=\"{index}.png\"\r\nContent-Type: image/png\r\n\r\n".encode() + part + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


# -- slow clients ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_guarded(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path) -> Iterator[DaemonProcess]:
    """The real daemon and model with short header and body deadlines."""
    process = DaemonProcess(
        tmp_path_factory.mktemp("slow"), free_port(), artifact=digits_artifact,
        extra_settings=(f'sources = ["http"]\n[http]\nheader_timeout_seconds = {HEADER_TIMEOUT}\n'
                        f"body_timeout_seconds = {BODY_TIMEOUT}\n"),
    )
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


def test_trickled_headers_are_cut_off_while_a_normal_client_is_served(slow_guarded: DaemonProcess) -> None:
    (label, png), = held_out_pngs(1)
    head = request_head("/v1/predict", slow_guarded.port,
                        {"Content-Type": "image/png", "X-Padding": "p" * 40, "Content-Length": str(len(png))})
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(trickle_head, slow_guarded.port, head)
        status, body, _ = post(slow_guarded.url + "/v1/predict", png)  # served meanwhile
        assert status == 200 and body["class"] == str(label)
        result = slow.result()
    # At one byte every 0.5 s the head would take a minute; the deadline ends it early.
    assert result.closed and result.sent < result.total // 4, result
    answer = parse_raw(result.received)
    assert answer.status == 408 and answer.headers["connection"] == "close"
    assert answer.json()["status"] == 408 and "http.header_timeout_seconds" in answer.json()["error"]


def test_a_connection_that_never_sends_a_byte_is_closed_without_an_answer(slow_guarded: DaemonProcess) -> None:
    connection = RawConnection(slow_guarded.port)
    try:
        assert connection.closed_by_server()
    finally:
        connection.close()


def test_a_kept_alive_connection_gets_a_fresh_header_deadline_per_request(slow_guarded: DaemonProcess) -> None:
    """Idle time between requests belongs to the keep-alive timeout, not the header deadline;
    the deadline starts again with the next request's first byte."""
    (_, png), = held_out_pngs(1)
    connection = RawConnection(slow_guarded.port)
    try:
        for _ in range(2):
            connection.send(request_head("/v1/predict", slow_guarded.port,
                                         {"Content-Type": "image/png", "Content-Length": str(len(png))}) + png)
            assert connection.response().status == 200
            time.sleep(2 * HEADER_TIMEOUT)  # idle longer than the header deadline: still open
        connection.send(b"POST /v1/pre")  # then a head that stalls
        answer = connection.response()
        assert answer.status == 408 and "http.header_timeout_seconds" in answer.json()["error"]
        assert connection.closed_by_server()
    finally:
        connection.close()


@pytest.mark.parametrize("kind", ["raw", "multipart", "feedback"])
def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closes(
    slow_guarded: DaemonProcess, kind: str
) -> None:
    (_, png), = held_out_pngs(1)
    if kind == "raw":
        path, content_type, body = "/v1/predict", "image/png", png
    elif kind == "multipart":
        path, (body, content_type) = "/v1/predict", multipart([png, png])
    else:
        path, content_type, body = "/v1/feedback", "application/json", json.dumps({"id": "x", "label": "1"}).encode()
    connection = RawConnection(slow_guarded.port)
    try:
        connection.send(request_head(path, slow_guarded.port,
                                     {"Content-Type": content_type, "Content-Length": str(len(body))}))
        connection.send(body[: len(body) // 2])  # half the body, then nothing
        answer = connection.response()
        assert answer.status == 408, answer
        assert answer.json() == {"error": answer.json()["error"], "status": 408}
        assert "http.body_timeout_seconds" in answer.json()["error"]
        assert connection.closed_by_server()
    finally:
        connection.close()


def test_many_slow_connections_do_not_keep_normal_clients_out(slow_guarded: DaemonProcess) -> None:
    digits = held_out_pngs(8)
    head = request_head("/v1/predict", slow_guarded.port, {"Content-Type": "image/png", "X-Padding": "p" * 40})
    with ThreadPoolExecutor(24) as pool:
        trickles = [pool.submit(trickle_head, slow_guarded.port, head) for _ in range(16)]
        stalled_bodies = []
        for _ in range(4):
            connection = RawConnection(slow_guarded.port)
            connection.send(request_head("/v1/predict", slow_guarded.port,
                                         {"Content-Type": "image/png", "Content-Length": "5000"}) + b"\x89PNG")
            stalled_bodies.append(connection)
        try:
            for label, png in digits:  # served one after another while 20 slow clients hang on
                status, body, _ = post(slow_guarded.url + "/v1/predict", png)
                assert status == 200 and body["class"] == str(label)
                assert get_status(slow_guarded.url + "/healthz") == 200
            for trickle in trickles:
                result = trickle.result()
                assert result.closed and parse_raw(result.received).status == 408
            for connection in stalled_bodies:
                assert connection.response().status == 408 and connection.closed_by_server()
        finally:
            for connection in stalled_bodies:
                connection.close()


def test_expect_100_continue_is_answered_once_the_request_is_admitted(slow_guarded: DaemonProcess) -> None:
    (label, png), = held_out_pngs(1)
    connection = RawConnection(slow_guarded.port)
    try:
        connection.send(request_head("/v1/predict", slow_guarded.port, {
            "Content-Type": "image/png", "Content-Length": str(len(png)), "Expect": "100-continue"}))
        assert connection.response().status == 100
        connection.send(png)
        answer = connection.response()
        assert answer.status == 200 and answer.json()["class"] == str(label)
    finally:
        connection.close()


# -- the concurrency cap and the byte budget ------------------------------------------------

def noise_png(seed: int, size: int = 64) -> bytes:
    """A PNG that does not compress: its size is predictable, a few kilobytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Gated:
    daemon: DaemonProcess
    gate: Path
    entered: Path
    image: bytes

    def throttled(self) -> float:
        return self.daemon.metric("monitord_images_total", source="http", outcome="throttled")

    def ingest_depth(self) -> float:
        return self.daemon.metric("monitord_queue_depth", stage="ingest")


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[Gated]:
    """A daemon whose pipeline holds every image until ``gate`` is removed.

    One decode worker: the first image blocks in preprocessing (its bytes still count as
    queued), the next ones wait in the ingest queue. Room for 2.5 images of ``image``'s size.
    """
    env, gate, entered = gated_model(tmp_path)
    image = noise_png(0)
    settings = f"""
sources = ["http"]
detectors = []
[http]
max_concurrent_requests = {MAX_CONCURRENT}
[pipeline]
decode_workers = 1
queue_size = 16
max_batch_delay = 0.0
max_queued_bytes = {len(image) * 5 // 2}
shutdown_timeout = 5.0
{gated_model_settings(gate, entered)}"""
    daemon = DaemonProcess(tmp_path, free_port(), extra_settings=settings, env=env)
    try:
        daemon.start()
        yield Gated(daemon, gate, entered, image)
    finally:
        gate.unlink(missing_ok=True)  # a blocked decode thread would keep the process alive
        daemon.kill()


def test_queued_bytes_are_bounded_and_a_request_over_the_budget_gets_503(gated: Gated) -> None:
    url = gated.daemon.url + "/v1/predict"
    small = noise_png(1, size=8)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(post, url, gated.image)
        wait_for(gated.entered.exists, 10, message="the first image blocked in preprocessing")
        second = pool.submit(post, url, gated.image)
        wait_for(lambda: gated.ingest_depth() == 1, 10, message="the second image queued")
        # 2 images of S bytes held, room for S/2: a third raw image is refused from its headers.
        status, body, headers = post(url, gated.image)
        assert status == 503 and headers["Retry-After"] == "1"
        assert body["status"] == 503 and "saturated" in body["error"]
        # A multipart body's image bytes are known only once read: refused after reading.
        form, content_type = multipart([gated.image])
        status, body, headers = post(url, form, content_type)
        assert status == 503 and headers["Retry-After"] == "1"
        assert "pipeline.max_queued_bytes" in body["error"]
        assert gated.throttled() == 2
        # The budget counts bytes, not images: a small image still fits.
        third = pool.submit(post, url, small)
        wait_for(lambda: gated.ingest_depth() == 2, 10, message="the small image queued")
        # An image the budget could never hold is a client error, not a retry.
        status, body, headers = post(url, noise_png(2, size=128))
        assert status == 413 and "pipeline.max_queued_bytes" in body["error"] and "Retry-After" not in headers
        gated.gate.unlink()
        for future in (first, second, third):
            status, body, _ = future.result()
            assert status == 200 and body["class"] in ("dark", "bright")
    # Decoded images give their bytes back: the budget is whole again.
    status, _, _ = post(url, gated.image)
    assert status == 200
    assert gated.throttled() == 2


def test_requests_past_the_concurrency_cap_get_429_before_their_body_is_read(gated: Gated) -> None:
    url = gated.daemon.url + "/v1/predict"
    small = noise_png(1, size=8)
    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
        held: list[Future] = []
        for count in range(1, MAX_CONCURRENT + 1):
            held.append(pool.submit(post, url, small))
            # The first blocks in preprocessing, the others wait in the ingest queue.
            wait_for(lambda: gated.entered.exists() and gated.ingest_depth() == count - 1, 10,
                     message=f"{count} request(s) in flight")
        status, body, headers = post(url, small)
        assert status == 429 and headers["Retry-After"] == "1"
        assert body["status"] == 429 and "http.max_concurrent_requests" in body["error"]
        # Refused from the headers: a client that asked for 100-continue never uploads.
        connection = RawConnection(gated.daemon.port)
        try:
            connection.send(request_head("/v1/predict", gated.daemon.port, {
                "Content-Type": "image/png", "Content-Length": str(len(small)), "Expect": "100-continue"}))
            answer = connection.response()
            assert answer.status == 429 and answer.headers["retry-after"] == "1"
        finally:
            connection.close()
        assert gated.throttled() == 2
        assert get_status(gated.daemon.url + "/healthz") == 200
        gated.gate.unlink()
        assert all(future.result()[0] == 200 for future in held)
    status, _, _ = post(url, small)  # the cap frees up with the answers
    assert status == 200


def test_header_deadline_applies_to_requests_that_keep_sending(slow_guarded: DaemonProcess) -> None:
    """A client that keeps its head growing (an endless header) is cut off all the same."""
    connection = RawConnection(slow_guarded.port)
    stop = threading.Event()

    def endless_header() -> None:
        try:
            connection.send(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
            while not stop.wait(0.2):
                connection.send(b"X-More: a\r\n")
        except OSError:
            pass

    writer = threading.Thread(target=endless_header)
    writer.start()
    try:
        answer = connection.response()
        assert answer.status == 408
        assert connection.closed_by_server()
    finally:
        stop.set()
        writer.join()
        connection.close()


# -- bodies that trickle: the minimum rate ---------------------------------------------------

MIN_RATE = 100  # bytes per second
RATE_GRACE = 1.0


@pytest.fixture(scope="module")
def paced(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path) -> Iterator[DaemonProcess]:
    """The real daemon with a minimum body rate and a body deadline far longer than any
    test here: a client cut off was cut off for its rate, not the deadline."""
    process = DaemonProcess(
        tmp_path_factory.mktemp("paced"), free_port(), artifact=digits_artifact,
        extra_settings=(f'sources = ["http"]\n[http]\nbody_timeout_seconds = 600\n'
                        f"min_body_rate_bytes = {MIN_RATE}\nbody_rate_grace_seconds = {RATE_GRACE}\n"),
    )
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


def trickle_body(port: int, head: bytes, stop: threading.Event | None = None, interval: float = 0.3,
                 give_up: float = 60.0) -> RawResponse | None:
    """Send ``head``, then the body one byte every ``interval`` s until the server answers;
    None if it never did (closed without an answer, ``stop`` set, or ``give_up`` passed)."""
    connection = RawConnection(port, timeout=5)
    deadline = time.monotonic() + give_up
    try:
        connection.send(head)
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            readable, _, _ = select.select([connection.sock], [], [], interval)
            if readable:
                try:
                    return connection.response()
                except ConnectionError:
                    return None
            try:
                connection.send(b"\0")
            except OSError:  # closed under us; an answer may still be waiting
                try:
                    return connection.response()
                except (ConnectionError, OSError):
                    return None
        return None
    finally:
        connection.close()


def body_request(kind: str, port: int) -> tuple[bytes, bytes]:
    """A request head announcing a body of 10 kB, and the body's first bytes."""
    (_, png), = held_out_pngs(1)
    if kind == "raw":
        path, content_type, start = "/v1/predict", "image/png", png[:20]
    elif kind == "multipart":
        body, content_type = multipart([png, png])
        path, start = "/v1/predict", body[:20]
    else:
        path, content_type, start = "/v1/feedback", "application/json", b'{"id": "x", "label": '
    return request_head(path, port, {"Content-Type": content_type, "Content-Length": "10000"}), start


@pytest.mark.parametrize("kind", ["raw", "multipart", "feedback"])
def test_a_body_slower_than_the_minimum_rate_gets_408_and_the_connection_closes(
    paced: DaemonProcess, kind: str
) -> None:
    head, start = body_request(kind, paced.port)
    answer = trickle_body(paced.port, head + start)  # about 3 bytes a second, the minimum is 100
    assert answer is not None and answer.status == 408, answer
    reason = answer.json()["error"]
    assert answer.json()["status"] == 408 and answer.headers["connection"] == "close"
    assert "http.min_body_rate_bytes" in reason and "http.body_rate_grace_seconds" in reason, reason


def test_a_body_that_keeps_up_with_the_minimum_rate_is_read_whole(paced: DaemonProcess) -> None:
    """Sent in pieces for longer than the grace period, but at many times the minimum rate."""
    image = noise_png(3)
    connection = RawConnection(paced.port)
    try:
        connection.send(request_head("/v1/predict", paced.port,
                                     {"Content-Type": "image/png", "Content-Length": str(len(image))}))
        piece = MIN_RATE * 2
        for offset in range(0, len(image), piece):  # 2,000 bytes a second for about 2 s
            connection.send(image[offset:offset + piece])
            time.sleep(0.1)
        answer = connection.response()
        assert answer.status == 200 and answer.json()["class"] in {str(digit) for digit in range(10)}, answer
    finally:
        connection.close()


def test_seventy_trickling_clients_do_not_lock_honest_clients_out(paced: DaemonProcess) -> None:
    """70 connections (more than http.max_concurrent_requests, 64) send their bodies a byte
    at a time and reconnect as soon as they are cut off or refused. Each holds a slot for
    about the grace period, not for the body deadline (600 s here): honest clients get in,
    again and again, while the tricklers get 408."""
    head = request_head("/v1/predict", paced.port, {"Content-Type": "image/png", "Content-Length": "100000"})
    stop = threading.Event()
    answers: list[RawResponse] = []
    cut_off_clients: set[int] = set()

    def trickler(index: int) -> None:
        while not stop.is_set():
            try:
                answer = trickle_body(paced.port, head, stop, interval=0.5)
            except OSError:
                answer = None
            if answer is not None:
                answers.append(answer)
                if answer.status == 408:
                    cut_off_clients.add(index)
                else:
                    stop.wait(0.2)  # refused from the headers (429): come back shortly

    digits = held_out_pngs(10)
    with ThreadPoolExecutor(70) as pool:
        tricklers = [pool.submit(trickler, index) for index in range(70)]
        try:
            # The attack works: every slot is held, an honest request is refused.
            refused: list[int] = []
            wait_for(lambda: refused.append(post(paced.url + "/v1/predict", digits[0][1])[0]) or refused[-1] == 429,
                     60, interval=0.05, message="the tricklers holding every slot (an honest request refused)")
            served: list[tuple[int, str]] = []

            def honest_request() -> bool:
                label, png = digits[len(served) % len(digits)]
                status, body, _ = post(paced.url + "/v1/predict", png)
                if status == 200:
                    served.append((label, body["class"]))
                else:
                    assert status == 429, (status, body)
                return len(served) >= 5

            wait_for(honest_request, 120, interval=0.02, message="5 honest requests served among the tricklers")
            assert all(str(label) == predicted for label, predicted in served), served
            wait_for(lambda: len(cut_off_clients) == 70, 120, message="every trickler cut off at least once")
        finally:
            stop.set()
            for future in tricklers:
                future.result()
    for answer in answers:
        assert answer.status in (408, 429), answer
        if answer.status == 408:
            assert "http.min_body_rate_bytes" in answer.json()["error"], answer
    assert get_status(paced.url + "/healthz") == 200
    log = paced.log()
    assert "Traceback" not in log, log[-3000:]
