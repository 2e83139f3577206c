"""The real Prometheus and Alertmanager (Debian packages) on loopback, and a webhook receiver.

Tests that need them call ``require_binary``: without the binary they skip with the reason,
unless ``MONITORD_REQUIRE_PROMETHEUS`` is set (``.ci/run`` sets it after installing the
packages), where a missing binary is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon_process import free_port, wait_http_ok


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)"
        if os.environ.get("MONITORD_REQUIRE_PROMETHEUS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class Server:
    """A server binary run as a subprocess, its output in a log file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, port: int, ready_path: str) -> None:
        self.name, self.port, self.workdir = name, port, workdir
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT)
        wait_http_ok(self.url + ready_path, self.process, self.log, 60, name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def start_prometheus(workdir: Path, config: str) -> Server:
    """Prometheus with ``config`` (YAML text; rule files relative to ``workdir``)."""
    binary = require_binary("prometheus")
    (workdir / "prometheus.yml").write_text(config)
    port = free_port()
    return Server("prometheus", [
        binary, "--config.file=prometheus.yml", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
    ], workdir, port, "/-/ready")


def start_alertmanager(workdir: Path, config: str) -> Server:
    binary = require_binary("prometheus-alertmanager")
    (workdir / "alertmanager.yml").write_text(config)
    port = free_port()
    return Server("alertmanager", [
        binary, "--config.file=alertmanager.yml", f"--storage.path={workdir / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
    ], workdir, port, "/-/ready")


def prometheus_query(prometheus: Server, expression: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"query": expression})
    return get_json(f"{prometheus.url}/api/v1/query?{query}")


class WebhookReceiver:
    """An HTTP receiver in a background thread that records every JSON body posted to it.

    ``stop()`` and ``start()`` simulate an outage on the same port.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: Path and query string of each request.
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self.received.append(body)
            self.headers.append(dict(request.headers))
            self.paths.append(request.path_qs)
        return web.json_response({"ok": True})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)
