"""The demo's side of the daemon: start its own or reach a running one, and read it.

Everything goes through the daemon's public surface (``/readyz``, ``/metrics`` and a
``monitord run`` subprocess), the way a user or a dashboard would see it, so the demo
shows what a newcomer will see in Prometheus.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .errors import DemoError


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` said; ``answered`` is False when nothing listens at all."""

    answered: bool
    ready: bool = False
    reason: str = "no answer"


@dataclass(frozen=True)
class DetectorReading:
    """One detector's series in ``/metrics`` (``monitord_drift_*``)."""

    name: str
    type: str
    signal: str
    statistic: float
    threshold: float
    #: 0 ok, 1 warning, 2 drift.
    level: int


@dataclass(frozen=True)
class Observation:
    """One scrape of ``/metrics``; ``time`` is when it was asked for (epoch seconds)."""

    time: float
    #: Folder-source images the daemon classified (``monitord_images_total{outcome="ok"}``).
    classified: int
    #: Folder-source images it refused or failed on (``rejected`` and ``error``).
    rejected: int
    detectors: dict[str, DetectorReading]
    #: The model the daemon serves (``monitord_build_info{model}``), once it is loaded.
    model: str | None = None


def parse_metrics(text: str, observed_at: float, source: str = "folder") -> Observation:
    """The demo's view of a Prometheus text exposition."""
    images: dict[str, float] = {}
    series: dict[str, dict[str, float]] = {}
    labels_of: dict[str, tuple[str, str]] = {}
    model = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "monitord_build_info":
                model = sample.labels.get("model")
            elif sample.name == "monitord_images_total" and sample.labels.get("source") == source:
                images[sample.labels.get("outcome", "")] = sample.value
            elif sample.name in ("monitord_drift_statistic", "monitord_drift_threshold", "monitord_drift_level"):
                name = sample.labels.get("detector", "")
                series.setdefault(name, {})[sample.name] = sample.value
                labels_of[name] = (sample.labels.get("type", ""), sample.labels.get("signal", ""))
    detectors = {}
    for name, values in series.items():
        level = values.get("monitord_drift_level", 0.0)
        detectors[name] = DetectorReading(
            name=name,
            type=labels_of[name][0],
            signal=labels_of[name][1],
            statistic=values.get("monitord_drift_statistic", math.nan),
            threshold=values.get("monitord_drift_threshold", math.nan),
            level=0 if math.isnan(level) else int(level),
        )
    return Observation(
        time=observed_at,
        classified=int(images.get("ok", 0)),
        rejected=int(images.get("rejected", 0) + images.get("error", 0)),
        detectors=detectors,
        model=model,
    )


class DaemonClient:
    """Talks to the daemon at ``url`` (no trailing slash)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def readiness(self) -> Readiness:
        """Ask ``/readyz``. Raises ``DemoError`` when something other than monitord answers."""
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=self.timeout) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return Readiness(answered=False)
        try:
            answer = json.loads(body)
            return Readiness(answered=True, ready=status == 200 and bool(answer["ready"]), reason=str(answer["reason"]))
        except (ValueError, KeyError, TypeError):
            raise DemoError(
                f"{self.url}/readyz answered HTTP {status} but not as monitord does; another program "
                "is using that address. Check --daemon-url, or leave out --port (or choose another) "
                "for the demo's own daemon"
            ) from None

    def observe(self) -> Observation:
        """Scrape ``/metrics``; raises ``DemoError`` when the daemon does not answer."""
        asked = time.time()
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=self.timeout) as response:
                text = response.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DemoError(f"the daemon stopped answering at {self.url}/metrics: {reason}") from None
        return parse_metrics(text, asked)


class StartedDaemon:
    """A ``monitord run`` the demo started itself, with its output in ``log_path``
    (which ``log_kept`` False says will be removed with the demo's temporary folder)."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, log_kept: bool = True) -> None:
        self.process = process
        self.log_path = log_path
        self.log_kept = log_kept

    @classmethod
    def start(
        cls, log_path: Path, environment: dict[str, str], cwd: Path, log_kept: bool = True
    ) -> StartedDaemon:
        """Start ``monitord run`` in ``cwd`` with settings from ``environment`` only."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "monitord", "run"]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment, cwd=cwd
            )
        return cls(process, log_path, log_kept)

    @property
    def log_name(self) -> str:
        """How messages name the log: its path, unless it goes with the temporary folder."""
        return f"its log ({self.log_path})" if self.log_kept else "its log"

    def exit_code(self) -> int | None:
        return self.process.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self, timeout: float) -> str | None:
        """SIGTERM (the daemon finishes in-flight work), then SIGKILL after ``timeout`` s.

        Returns None after a clean exit, else what went wrong, for the user.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                return f"the daemon did not stop within {timeout:g} s of SIGTERM and was killed"
            except KeyboardInterrupt:  # a second Ctrl-C: no more waiting, but no orphan either
                self.process.kill()
                self.process.wait(10)
                raise
        if self.process.returncode != 0:
            return f"the daemon exited with status {self.process.returncode}"
        return None


def wait_until_ready(
    client: DaemonClient,
    timeout: float,
    started: StartedDaemon | None = None,
    say: Callable[[str], None] = lambda line: None,
    interval: float = 0.2,
) -> None:
    """Return once ``/readyz`` says ready; ``DemoError`` on timeout or when ``started`` exits."""
    deadline = time.monotonic() + timeout
    last_reason = ""
    while True:
        if started is not None and started.exit_code() is not None:
            raise DemoError(
                f"the daemon exited with status {started.exit_code()} before it was ready; "
                f"the end of {started.log_name}:\n{started.log_tail()}"
            )
        readiness = client.readiness()
        if readiness.ready:
            return
        if readiness.reason != last_reason:
            last_reason = readiness.reason
            say(f"waiting for the daemon at {client.url}: {readiness.reason}")
        if time.monotonic() >= deadline:
            where = f"; the end of {started.log_name}:\n{started.log_tail()}" if started else ""
            raise DemoError(
                f"the daemon at {client.url} was not ready after {timeout:g} s "
                f"(last /readyz: {readiness.reason}); raise --ready-timeout if it is just slow{where}"
            )
        time.sleep(interval)
