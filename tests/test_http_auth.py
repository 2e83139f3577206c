"""The optional bearer token on the API, and the warning for an open API off loopback."""

from __future__ import annotations

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
