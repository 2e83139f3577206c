"""The optional bearer token on the API, and the warning for an open API off loopback."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from daemon_process import DaemonProcess, free_port
from monitord.daemon import is_loopback

TOKEN = "s3cret-token-0123456789"


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    process = DaemonProcess(tmp_path_factory.mktemp("auth"), free_port(), artifact=digits_artifact,
                            extra_settings='sources = ["http"]\n[http]\nprotect_metrics = true\n',
                            env={"MONITORD_HTTP__TOKEN": TOKEN})
    process.start()
    yield process
    process.kill()


def test_api_needs_the_token_and_health_does_not(guarded: DaemonProcess) -> None:
    assert status(guarded.url + "/v1/detectors") == 401
    assert status(guarded.url + "/v1/detectors", "wrong-token-0123456789") == 401
    assert status(guarded.url + "/v1/detectors", TOKEN) == 200
    assert status(guarded.url + "/metrics") == 401 and status(guarded.url + "/metrics", TOKEN) == 200
    assert status(guarded.url + "/healthz") == 200 and status(guarded.url + "/readyz") == 200
    assert TOKEN not in guarded.log()


def test_open_api_off_loopback_is_warned_about(tmp_path: Path, digits_artifact: Path) -> None:
    process = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact,
                            extra_settings='sources = ["http"]\n[http]\nhost = "0.0.0.0"\n')
    try:
        process.start()
        assert "http.token is not set" in process.log()
    finally:
        process.kill()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_a_bad_token_is_refused_without_being_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from monitord.settings import SettingsError, load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONITORD_HTTP__TOKEN", "tooshort")
    with pytest.raises(SettingsError) as raised:
        load_settings(None)
    assert "http.token = <hidden>" in str(raised.value) and "tooshort" not in str(raised.value)


# -- what a client sends stays out of the log ------------------------------------------------


def exchange(port: int, data: bytes) -> tuple[int, str, dict]:
    """Send ``data`` on a fresh connection; the answer's status, Content-Type and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers.get("content-type", ""), json.loads(body)


def length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


MARKER = "SECRET-MARKER-7f3a9c"


@pytest.mark.parametrize("request_bytes, status, fragment", [
    # A careless client puts the token in the query string of an over-long URL.
    (f"GET /v1/detectors?token={TOKEN}&marker={MARKER}&pad={'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
     414, "8190 bytes"),
    # ... or sends an Authorization header over aiohttp's line limit.
    (f"GET /v1/detectors HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}{MARKER}{'b' * 9000}\r\n\r\n".encode(),
     431, "8190 bytes"),
    (f"GET * HTTP/1.1\r\nHost: x\r\nX-Marker: {MARKER}\r\n\r\n".encode(), 400, "request target"),
    (f"G\x01T /?token={TOKEN}&marker={MARKER} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 400, "not an HTTP request"),
    (f"GET /?token={TOKEN}&marker={MARKER} HTTP/1.1\r\nHost: x\r\nBad Header{MARKER}: 1\r\n\r\n".encode(),
     400, "malformed"),
], ids=["long-request-line", "long-header", "asterisk-target", "bad-method", "bad-header"])
def test_requests_aiohttp_cannot_parse_answer_json_and_nothing_of_them_is_logged(
    guarded: DaemonProcess, request_bytes: bytes, status: int, fragment: str
) -> None:
    """aiohttp's own refusals (the parser's 400s) are JSON like every other error, and the
    request line, its query and the headers (which may hold a credential) never reach the
    log, not even at DEBUG."""
    logged_before = len(guarded.log())
    answer_status, content_type, body = exchange(guarded.port, request_bytes)
    assert (answer_status, body["status"]) == (status, status), body
    assert content_type.startswith("application/json") and fragment in body["error"], body
    assert TOKEN not in body["error"] and MARKER not in body["error"]
    assert status_of(guarded, "/healthz") == 200
    log = guarded.log()[logged_before:]
    assert TOKEN not in log and MARKER not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def status_of(process: DaemonProcess, path: str) -> int:
    return status(process.url + path)


# -- the Authorization header ----------------------------------------------------------------


def raw_status(port: int, authorization: bytes) -> tuple[int, dict]:
    status_code, _, body = exchange(port, b"GET /v1/detectors HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                    b"Authorization: " + authorization + b"\r\n\r\n")
    return status_code, body


@pytest.mark.parametrize("authorization", [
    b"Bearer \xff\xfe\xfd", b"\xff\xfe", b"Bearer " + TOKEN.encode() + b"\xe9", b"Bearer", b"Bearer  ",
    b"Basic " + TOKEN.encode(), b"Bearer" + TOKEN.encode(), b"\x80" * 40,
], ids=["undecodable-credentials", "undecodable-scheme", "token-and-latin1", "no-credentials", "blank",
        "other-scheme", "no-space", "garbage"])
def test_a_garbage_authorization_header_is_401_without_a_traceback(guarded: DaemonProcess, authorization: bytes) -> None:
    logged_before = len(guarded.log())
    status_code, body = raw_status(guarded.port, authorization)
    assert status_code == 401 and body["status"] == 401 and "bearer token" in body["error"], body
    log = guarded.log()[logged_before:]
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(guarded: DaemonProcess, scheme: bytes) -> None:
    """RFC 7235 §2.1: the scheme is a case-insensitive token; the token itself is not."""
    assert raw_status(guarded.port, scheme + b" " + TOKEN.encode())[0] == 200
    assert raw_status(guarded.port, scheme + b"   " + TOKEN.encode())[0] == 200  # 1*SP
    assert raw_status(guarded.port, scheme + b" " + TOKEN.upper().encode())[0] == 401
