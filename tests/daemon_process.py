"""Run the real daemon as a subprocess, the way a user runs it, and talk to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonProcess:
    def __init__(
        self,
        workdir: Path,
        port: int,
        artifact: Path | None = None,
        extra_settings: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.inbox = workdir / "inbox"
        self.processed = workdir / "processed"
        self.failed = workdir / "failed"
        self.state = workdir / "state"
        self.log_path = workdir / f"daemon-{port}.log"
        self.config = workdir / f"monitord-{port}.toml"
        # The test's own settings go in the TOML file; where the daemon lives goes in the
        # environment, which is how a container would set it.
        self.config.write_text(extra_settings)
        base = {
            "MONITORD_STATE_DIR": str(self.state),
            "MONITORD_LOG_LEVEL": "DEBUG",
            "MONITORD_HTTP__PORT": str(port),
            "MONITORD_FOLDER__INBOX": str(self.inbox),
            "MONITORD_FOLDER__PROCESSED": str(self.processed),
            "MONITORD_FOLDER__FAILED": str(self.failed),
        }
        if artifact:
            base["MONITORD_MODEL__ARTIFACT"] = str(artifact)
        self.env = {**os.environ, **base, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 120) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitord", "run", "--config", str(self.config)],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 120) -> None:
        """Ready, and (one process) its monitor has built its detectors: ``/readyz`` says the
        daemon takes images, while detectors that calibrate on their reference may still be
        at it (the monitor applies what came meanwhile afterwards), and tests read their state."""
        assert self.process is not None
        started = time.monotonic()
        wait_http_ok(self.url + "/readyz", self.process, self.log, timeout, "daemon")
        if self.env.get("MONITORD_ROLE", "all") != "all":
            return  # a role apart: its monitor is another process, or it is the monitor alone
        wait_for(lambda: self._detectors_published(), max(1.0, timeout - (time.monotonic() - started)),
                 message=f"the monitor to publish its detectors:\n{self.log()}")

    def _detectors_published(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/v1/detectors", timeout=2):
                return True
        except urllib.error.HTTPError as error:
            return error.code != 503  # 401 behind a token: the route answers, nothing to wait for
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics`` keyed by (name, sorted labels)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None:
            self._log.close()


def wait_http_ok(url: str, process: subprocess.Popen, log, timeout: float, name: str) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} not ready after {timeout}s:\n{log()}")


def wait_for(predicate, timeout: float = 60, interval: float = 0.1, message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


async def post_multipart(session, url: str, pngs: list[bytes]) -> None:
    """``POST /v1/predict`` with ``pngs`` as one multipart request; every image must be classified."""
    import aiohttp

    form = aiohttp.FormData()
    for index, data in enumerate(pngs):
        form.add_field("image", data, filename=f"{index}.png", content_type="image/png")
    async with session.post(url + "/v1/predict", data=form) as response:
        body = await response.json()
        assert response.status == 200 and body["errors"] == 0, body
