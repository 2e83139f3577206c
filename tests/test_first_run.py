"""A new user's first ``monitord run``: no artifact yet, so the default model trains first."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from daemon_process import DaemonProcess, free_port
from digit_files import held_out_pngs


def get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_first_run_trains_the_default_model_and_reports_loading_meanwhile(tmp_path: Path) -> None:
    process = DaemonProcess(tmp_path, free_port(), extra_settings='sources = ["http"]\n')
    process.start(wait_ready=False)
    try:
        # HTTP comes up before the model: the first answers say why the daemon is not ready.
        first: tuple[int, dict] | None = None
        deadline = time.monotonic() + 60
        while first is None and time.monotonic() < deadline:
            try:
                first = get(process.url + "/readyz")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        assert first is not None, process.log()
        assert first[0] == 503 and "loading model" in json.dumps(first[1]), first
        (label, png), = held_out_pngs(1)
        status, body = get(process.url + "/v1/predict", png, {"Content-Type": "image/png"})
        if status != 200:  # training may have finished in between; otherwise it must be a 503
            assert status == 503 and "error" in body, body

        process.wait_ready(timeout=180)
        artifact = process.state / "model"
        assert (artifact / "model.safetensors").is_file() and (artifact / "metadata.json").is_file()
        metadata = json.loads((artifact / "metadata.json").read_text())
        assert metadata["class_names"] == [str(digit) for digit in range(10)]
        status, body = get(process.url + "/v1/predict", png, {"Content-Type": "image/png"})
        assert status == 200 and body["class"] == str(label), body
        assert "training the default digits model" in process.log()
        assert process.terminate() == 0
    finally:
        process.kill()
