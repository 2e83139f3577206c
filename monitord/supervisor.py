"""``pipeline.workers = N``: one host's cores used without a setting more.

One Python process does about one core's work, so a host with many cores (and a GPU to
feed) needs several. ``monitord run`` with ``pipeline.workers = N`` starts, as its
children, N inference processes and one monitor on one stream, and keeps them running:

- the stream is ``bus.url``, or a private ``redis-server`` this process starts on a Unix
  socket in ``<state_dir>/bus`` (AOF on, nothing listening on the network);
- the inference processes share ``http.port`` (SO_REUSEPORT: the kernel spreads the
  connections) and the inbox (each its share, ``folder.share``, with one ledger), and each
  has its own state folder under ``<state_dir>/processes/``;
- the monitor has its own (the predictions log, the spool and the checkpoint's local files
  are there) and no public port: every route it would answer is answered by any inference
  process from the stream (``/v1/detectors``, labels);
- metrics: every process writes to ``<state_dir>/metrics`` (prometheus-client's
  multiprocess mode), so a scrape of ``http.port`` answers for all of them.

A child that dies is started again (after 1 s, up to 30 s between repeated failures); on
SIGTERM or SIGINT each child is told to stop and given ``pipeline.shutdown_timeout`` (+5 s)
before it is killed. This is deliberately small: for several hosts, or for a process
manager's own restarts and logs, run the roles directly (``--role``) under systemd or
compose (README: "Scaling out").
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from monitord.settings import Settings

#: Under ``<state_dir>``, a folder per child process, named as the child (``monitor``,
#: ``inference-1``, ...): its state folder.
PROCESSES_FOLDER = "processes"
MONITOR = "monitor"


def child_state_dir(state_dir: Path, name: str) -> Path:
    """The state folder the supervisor gives its child ``name``."""
    return Path(state_dir) / PROCESSES_FOLDER / name

log = logging.getLogger("monitord.supervisor")

#: Seconds before a child that died is started again, doubling up to ``MAX_RESTART_DELAY``.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
#: Seconds a child must run to count as started well (its restart delay starts over).
HEALTHY_AFTER = 30.0


class SupervisorError(Exception):
    """The children cannot be started; the message says what to install or set."""


@dataclass
class Child:
    name: str
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    #: Seconds before the next restart; doubles while the child keeps dying young.
    delay: float = RESTART_DELAY
    task: asyncio.Task[None] | None = field(default=None, repr=False)


def private_redis_command(folder: Path) -> list[str]:
    """A redis-server for this host's processes only: a Unix socket, no TCP port, AOF."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SupervisorError(
            "pipeline.workers needs a stream its processes share: install redis-server (Debian/Ubuntu: "
            "apt-get install redis-server; Fedora: dnf install redis; macOS: brew install redis), or set "
            "bus.url to a Redis you run (MONITORD_BUS__URL=redis://host:6379/0)"
        )
    return [binary, "--port", "0", "--unixsocket", str(folder / "redis.sock"), "--unixsocketperm", "700",
            "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--loglevel", "warning"]


class Supervisor:
    def __init__(self, settings: Settings, config: Path | None) -> None:
        self.settings = settings
        self.config = config
        self.state_dir = Path(settings.state_dir).resolve()
        self.stopping = asyncio.Event()
        self.children: list[Child] = []
        self._redis: asyncio.subprocess.Process | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        try:
            url = self.settings.bus.url or await self._start_redis()
        except SupervisorError as error:
            log.error("%s", error)
            return 2
        self.children = self._plan(url)
        for child in self.children:
            child.task = asyncio.create_task(self._keep_running(child), name=f"child-{child.name}")
        log.info("%d inference process(es) on port %d and a monitor, on %s", self.settings.pipeline.workers,
                 self.settings.http.port, "a private redis-server" if self._redis else "bus.url")
        await self.stopping.wait()
        await asyncio.gather(*(child.task for child in self.children if child.task), return_exceptions=True)
        if self._redis is not None:  # last: the children's final publishes and checkpoint need it
            if self._redis.returncode is None:
                self._redis.terminate()
            await self._redis.wait()
        log.info("stopped")
        return 0

    def _stop(self, signum: int) -> None:
        if not self.stopping.is_set():
            log.info("received %s, stopping the processes", signal.Signals(signum).name)
        self.stopping.set()

    async def _start_redis(self) -> str:
        folder = self.state_dir / "bus"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        socket = folder / "redis.sock"
        socket.unlink(missing_ok=True)
        # A session of its own: a Ctrl-C at the terminal must not stop it before the children.
        self._redis = await asyncio.create_subprocess_exec(*private_redis_command(folder), start_new_session=True)
        for _ in range(200):
            if socket.exists():
                return f"unix://{socket}?db=0"
            if self._redis.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if self._redis.returncode is None:  # alive but without its socket: not left behind
            self._redis.terminate()
            await self._redis.wait()
        raise SupervisorError(f"the private redis-server did not start (exit status {self._redis.returncode}); "
                              f"see its log lines above, and {folder}")

    def _plan(self, url: str) -> list[Child]:
        from monitord.alerting.episodes import default_instance

        count = self.settings.pipeline.workers
        instance = self.settings.alerts.instance or default_instance(self.settings.http.host, self.settings.http.port)
        metrics = self.state_dir / "metrics"
        shutil.rmtree(metrics, ignore_errors=True)  # values of processes long gone
        metrics.mkdir(mode=0o700, parents=True)
        common = {
            "MONITORD_BUS__URL": url,
            "MONITORD_PIPELINE__WORKERS": "0",
            "MONITORD_MODEL__ARTIFACT": str(Path(self.settings.model_artifact).resolve()),
            # The monitor sends the alerts: they name the port clients use, not its own.
            "MONITORD_ALERTS__INSTANCE": instance,
            "MONITORD_ALERTS__EXTERNAL_URL": self.settings.alerts.external_url or f"http://{instance}",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        }
        if self.config is not None:
            common["MONITORD_CONFIG"] = str(Path(self.config).resolve())
        children = [Child(MONITOR, {**common, "MONITORD_ROLE": "monitor",
                                      "MONITORD_STATE_DIR": str(child_state_dir(self.state_dir, MONITOR)),
                                      "MONITORD_HTTP__HOST": "127.0.0.1", "MONITORD_HTTP__PORT": "0",
                                      "MONITORD_LOG_TAG": "monitor"})]
        for index in range(1, count + 1):
            children.append(Child(f"inference-{index}", {
                **common,
                "MONITORD_ROLE": "inference",
                "MONITORD_STATE_DIR": str(child_state_dir(self.state_dir, f"inference-{index}")),
                "MONITORD_HTTP__REUSE_PORT": "true",
                "MONITORD_FOLDER__SHARE": f"{index}/{count}",
                "MONITORD_FOLDER__LEDGER": str(self.state_dir / "ledger.sqlite3"),
                "MONITORD_LOG_TAG": f"inference-{index}",
            }))
        return children

    async def _keep_running(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            started_at = loop.time()
            child.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "monitord", "run", env={**os.environ, **child.env})
            log.info("started %s (pid %d)", child.name, child.process.pid)
            waiting = asyncio.ensure_future(child.process.wait())
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if self.stopping.is_set():
                await self._stop_child(child, waiting)
                return
            self._forget(child.process.pid)
            lived = loop.time() - started_at
            if lived >= HEALTHY_AFTER:
                child.delay = RESTART_DELAY
            wait, child.delay = child.delay, min(child.delay * 2, MAX_RESTART_DELAY)
            log.error("%s (pid %d) exited with status %s after %.0f s; starting it again in %.0f s",
                      child.name, child.process.pid, child.process.returncode, lived, wait)
            try:
                await asyncio.wait_for(self.stopping.wait(), wait)
            except TimeoutError:
                pass

    async def _stop_child(self, child: Child, waiting: asyncio.Future) -> None:
        assert child.process is not None
        if child.process.returncode is None:
            child.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), self.settings.pipeline.shutdown_timeout + 5)
        except TimeoutError:
            log.error("%s (pid %d) did not stop in time; killing it", child.name, child.process.pid)
            child.process.kill()
            await waiting
        self._forget(child.process.pid)

    def _forget(self, pid: int) -> None:
        """Its live gauges leave the host's metrics (its counters stay in the sums)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.state_dir / "metrics"))
