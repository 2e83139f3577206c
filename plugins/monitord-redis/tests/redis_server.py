"""A real ``redis-server`` (the Debian package) for the tests, in a folder of its own.

Each server listens on a free loopback port and on a unix socket in its folder, keeps an
append-only file there (``appendfsync everysec``, as the README recommends) and nothing
else: no system service is used. ``stop``/``start`` make an outage on the same port, with
the data kept; ``kill`` is a crash (what ``appendfsync everysec`` can lose, it loses).

Without the binary the tests skip, unless ``MONITORD_REQUIRE_REDIS`` is set (``.ci/run``
sets it after installing the package), where a missing binary is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from daemon_process import free_port


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("MONITORD_REQUIRE_REDIS"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.socket = folder / "redis.sock"
        self.log_path = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 30) -> None:
        self.process = subprocess.Popen([
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--logfile", str(self.log_path), "--daemonize", "no",
        ], cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"redis-server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the append-only file
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server not answering after {timeout}s:\n{self.log()}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Shut down as an operator would (SIGTERM: the append-only file is flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def kill(self) -> None:
        """A crash: whatever was not yet written to the append-only file is lost."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
