"""What the reliability benchmarks (soak.py, backlog.py) share: the real daemon as a
subprocess, its memory, a webhook receiver, digit PNGs good and bad, and RESULTS.md.

Only the daemon's public interfaces are used: the ``monitord`` CLI, settings through a
TOML file and ``MONITORD_*`` variables, HTTP, and the files in its folders.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def interrupt_on_sigterm() -> None:
    """SIGTERM to the benchmark raises KeyboardInterrupt, so its ``finally`` kills the daemon."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# -- the model ----------------------------------------------------------------------------


def trained_artifact(folder: Path, seed: int = 0) -> Path:
    """The default digits model in ``folder`` (``monitord train``), trained unless there."""
    if (folder / "metadata.json").exists() and (folder / "model.safetensors").exists():
        return folder
    command = [sys.executable, "-m", "monitord", "train", "--output", str(folder), "--seed", str(seed),
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return folder


# -- the daemon ---------------------------------------------------------------------------


def read_status(pid: int) -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` of ``pid`` in bytes, from /proc/<pid>/status; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    if "VmRSS" not in values:
        return None  # a zombie has no memory lines
    return values["VmRSS"], values.get("VmHWM", values["VmRSS"])


class Daemon:
    """``python -m monitord run --config FILE`` in ``workdir``, its output in one log file.

    Where it keeps things goes in the environment (as a container would set it), the rest
    of the settings in the TOML file. ``start`` may be called again after a stop or a kill:
    same port, same folders, same log (appended).
    """

    def __init__(self, workdir: Path, artifact: Path, settings: str, port: int | None = None,
                 log_level: str = "INFO", env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.inbox = workdir / "inbox"
        self.processed = workdir / "processed"
        self.failed = workdir / "failed"
        self.state = workdir / "state"
        self.log_path = workdir / "daemon.log"
        self.config = workdir / "monitord.toml"
        self.config.write_text(settings)
        self.env = {
            **os.environ,
            "MONITORD_STATE_DIR": str(self.state),
            "MONITORD_LOG_LEVEL": log_level,
            "MONITORD_HTTP__PORT": str(self.port),
            "MONITORD_FOLDER__INBOX": str(self.inbox),
            "MONITORD_FOLDER__PROCESSED": str(self.processed),
            "MONITORD_FOLDER__FAILED": str(self.failed),
            "MONITORD_MODEL__ARTIFACT": str(artifact),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running():
            raise RuntimeError("the daemon is already running")
        if self._log is None:
            self._log = self.log_path.open("ab")
        self.starts += 1
        self._log.write(f"\n===== benchmark: start #{self.starts} at {utc_now()} =====\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitord", "run", "--config", str(self.config)],
            cwd=self.workdir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 180, poll: float = 0.1) -> float:
        """Block until /readyz answers 200 (asked every ``poll`` seconds); the seconds it
        took. Fails if the process exits."""
        began = time.monotonic()
        deadline = began + timeout
        while time.monotonic() < deadline:
            if not self.running():
                code = self.process.returncode if self.process else None
                raise RuntimeError(f"the daemon exited with {code} before it was ready; log: {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - began
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(poll)
        raise RuntimeError(f"the daemon was not ready after {timeout:.0f} s; log: {self.log_path}")

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def terminate(self, timeout: float = 120) -> int:
        """SIGTERM and wait; the exit status (SIGKILL and -9 if it did not stop in time)."""
        assert self.process is not None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            return -9

    def close(self) -> None:
        """Kill the daemon if it still runs (every exit path of a benchmark ends here)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def metrics_text(self, timeout: float = 10) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=timeout) as response:
            return response.read().decode()

    def metrics(self, timeout: float = 10) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics keyed by (name, sorted labels)."""
        return parse_metrics(self.metrics_text(timeout))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_sum(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for (sample_name, sample_labels), value in samples.items():
        if sample_name == name and all((key, value_) in sample_labels for key, value_ in labels.items()):
            total += value
    return total


@dataclass
class MemorySample:
    seconds: float  # since the sampler started
    pid: int
    rss: int
    hwm: int
    progress: float | None = None  # whatever the benchmark counts as done, when it knows
    at: float = 0.0  # time.monotonic()


@dataclass
class MemorySampler:
    """Reads VmRSS and VmHWM of the daemon's current process every ``interval`` seconds."""

    pid: Callable[[], int | None]
    interval: float = 1.0
    progress: Callable[[], float | None] | None = None
    samples: list[MemorySample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._began = time.monotonic()

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def sample_now(self) -> MemorySample | None:
        pid = self.pid()
        status = read_status(pid) if pid else None
        if status is None:
            return None
        progress = None
        if self.progress is not None:
            try:
                progress = self.progress()
            except Exception:  # the daemon may be restarting; memory still counts
                progress = None
        now = time.monotonic()
        sample = MemorySample(now - self._began, pid, status[0], status[1], progress, now)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_now()
            self._stop.wait(self.interval)

    def write_csv(self, path: Path) -> None:
        """Every sample: seconds, pid, VmRSS and VmHWM in bytes, progress."""
        lines = ["seconds,pid,vmrss_bytes,vmhwm_bytes,progress"]
        lines += [f"{s.seconds:.2f},{s.pid},{s.rss},{s.hwm},{'' if s.progress is None else s.progress:}"
                  for s in list(self.samples)]
        path.write_text("\n".join(lines) + "\n")

    def peak(self, pid: int | None = None) -> tuple[int, int]:
        """Highest VmRSS sampled and highest VmHWM, for one process or all of them."""
        chosen = [s for s in self.samples if pid is None or s.pid == pid]
        if not chosen:
            return 0, 0
        return max(s.rss for s in chosen), max(s.hwm for s in chosen)


# -- a webhook receiver -------------------------------------------------------------------


@dataclass
class Notification:
    received: float  # time.time()
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def key(self) -> tuple[str, str, str]:
        """(fingerprint, status, startsAt): one notification, whatever copy of it this is."""
        alert = self.body["alerts"][0]
        return alert["fingerprint"], self.body["status"], alert["startsAt"]


class WebhookReceiver:
    """aiohttp on loopback, in a thread of this process; records every POST /hook."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.notifications: list[Notification] = []
        self.bad_bodies = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True)
        self._runner = None
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(15)

    async def _handle(self, request):
        from aiohttp import web

        try:
            body = await request.json()
            notification = Notification(time.time(), body, dict(request.headers))
            notification.key  # noqa: B018 - a body without the Alertmanager shape counts as bad
        except Exception:
            with self._lock:
                self.bad_bodies += 1
            return web.json_response({"error": "not an Alertmanager webhook body"}, status=400)
        with self._lock:
            self.notifications.append(notification)
        return web.json_response({"ok": True})

    async def _start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(15)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


# -- images -------------------------------------------------------------------------------


def digit_pngs(kind: str = "clean", seed: int = 0) -> list[tuple[int, bytes]]:
    """(label, PNG bytes) for each of the 360 held-out digits, drifted by ``kind``."""
    import numpy as np
    from monitord_torchvision.digits import digit_png_bytes, held_out_digits
    from monitord_torchvision.drifts import drift_image

    images, labels = held_out_digits()
    rng = np.random.default_rng(seed)
    out = []
    for image, label in zip(images, labels):
        pixels = image if kind == "clean" else drift_image(image, kind, rng=rng)
        out.append((int(label), digit_png_bytes(pixels)))
    return out


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def oversized_png(width: int = 8000, height: int = 8000) -> bytes:
    """A valid PNG header announcing width x height (64 M pixels by default, over the
    daemon's 40 M default cap, under PIL's own bomb limit) with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


BAD_KINDS = ("truncated", "empty", "text", "oversized")


def bad_input(kind: str, good_png: bytes) -> bytes:
    """Bytes the daemon must reject (named .png): truncated, empty, text, oversized header."""
    if kind == "truncated":
        return good_png[: max(16, len(good_png) // 2)]
    if kind == "empty":
        return b""
    if kind == "text":
        return b"this is a text file that was given a .png name\n" * 3
    if kind == "oversized":
        return oversized_png()
    raise ValueError(f"unknown bad input kind {kind!r}")


# -- files ---------------------------------------------------------------------------------


def drop_atomically(staging: Path, target: Path, data: bytes) -> None:
    """Write in ``staging`` (same file system, outside the inbox), then rename into place."""
    temporary = staging / f"{target.parent.name}-{target.name}"
    temporary.write_bytes(data)
    os.replace(temporary, target)


def count_files(folder: Path) -> int:
    """Regular files under ``folder`` (dotfiles included: a daemon temp file is a file)."""
    total = 0
    for _, _, files in os.walk(folder):
        total += len(files)
    return total


# -- reporting ------------------------------------------------------------------------------


def utc_now() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "absent"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu_model()}, {os.cpu_count()} cores ({usable} usable){memory}, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, torch {torch_version}; "
            f"load average at the end {os.getloadavg()[0]:.2f}")


def mib(value: float) -> str:
    return f"{value / 1024 / 1024:,.1f} MiB"


def table(rows: list[tuple[str, str]]) -> str:
    """A two-column markdown table."""
    lines = ["| | |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def replace_section(path: Path, heading: str, section: str, parent: str | None = None) -> None:
    """Put ``section`` (starting with ``heading``, a "## " or "### " line) into ``path``:
    in place of the section with that heading, which ends at the next heading of its level
    or above; else at the end of ``parent``'s section (made if missing), or of the file.
    Everything else in the file stays as it was."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    new = section.rstrip("\n").splitlines()
    start = _heading_at(lines, heading)
    if start is not None:
        end = _section_end(lines, start)
        lines[start:end] = new + ([""] if end < len(lines) else [])
    else:
        if parent is not None:
            at = _heading_at(lines, parent)
            if at is None:
                new = [parent, ""] + new
                end = len(lines)
            else:
                end = _section_end(lines, at)
        else:
            end = len(lines)
        before, after = lines[:end], lines[end:]
        while before and not before[-1].strip():
            before.pop()
        lines = before + [""] + new + ([""] + after if after else [])
    path.write_text("\n".join(lines) + "\n")


def _heading_at(lines: list[str], heading: str) -> int | None:
    return next((i for i, level in _headings(lines) if lines[i].strip() == heading), None)


def _section_end(lines: list[str], start: int) -> int:
    level = dict(_headings(lines))[start]
    return next((i for i, other in _headings(lines) if i > start and other <= level), len(lines))


def _headings(lines: list[str]) -> list[tuple[int, int]]:
    """(line index, level) of each Markdown heading, outside fenced code."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            if line[level:level + 1] == " ":
                found.append((i, level))
    return found


def log_summary(text: str, limit: int = 8) -> list[str]:
    """Counts of ERROR / CRITICAL / Traceback lines in a daemon log and the first distinct ones."""
    errors = [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line
              or line.startswith("Traceback")]
    distinct = list(dict.fromkeys(line[line.find(" ERROR ") if " ERROR " in line else 0:][:200] for line in errors))
    return [f"{len(errors)} ERROR/CRITICAL/Traceback lines"] + distinct[:limit]
