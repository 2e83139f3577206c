"""Several ``monitord run`` processes on one Redis stream, each as if on a host of its own:
its own working folder (inbox, processed/, state folder) and its own port."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from daemon_process import DaemonProcess, free_port, wait_for
from redis_server import RedisServer
from servers import get_json


class Cluster:
    def __init__(self, folder: Path, redis_server: RedisServer, settings: str, artifact: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.redis = redis_server
        self.settings = settings
        self.artifact = artifact
        self.env = env or {}
        self.processes: list[DaemonProcess] = []

    def process(self, role: str, name: str, start: bool = True, wait_ready: bool = True,
                env: dict[str, str] | None = None) -> DaemonProcess:
        workdir = self.folder / name
        workdir.mkdir(parents=True, exist_ok=True)
        environment = {**self.env, "MONITORD_ROLE": role, "MONITORD_BUS__URL": self.redis.url, **(env or {})}
        process = DaemonProcess(workdir, free_port(), artifact=self.artifact, extra_settings=self.settings,
                                env=environment)
        self.processes.append(process)
        if start:
            process.start(wait_ready=wait_ready)
        return process

    def inference(self, name: str, **options: Any) -> DaemonProcess:
        return self.process("inference", name, **options)

    def monitor(self, name: str, **options: Any) -> DaemonProcess:
        return self.process("monitor", name, **options)

    def start_all(self, *processes: DaemonProcess, timeout: float = 120) -> None:
        """Start ``processes`` side by side and wait until each is ready."""
        for process in processes:
            process.start(wait_ready=False)
        for process in processes:
            process.wait_ready(timeout)

    def inference_and_monitor(self) -> tuple[DaemonProcess, DaemonProcess]:
        """Inference node ``a`` and monitor ``m``, started side by side, once the monitor holds the lease."""
        inference, monitor = self.inference("a", start=False), self.monitor("m", start=False)
        self.start_all(inference, monitor)
        wait_for(lambda: self.active_monitor_port() is not None, 30, message="an active monitor")
        return inference, monitor

    def drained(self) -> bool:
        """Whether the monitor applied every entry published so far (``counts``)."""
        client = self.redis.client()
        try:
            applied = client.get("monitord:applied")
            added = client.xinfo_stream("monitord:entries")["entries-added"] if client.exists("monitord:entries") else 0
        finally:
            client.close()
        return applied is not None and int(applied) == added

    def checkpoint_state(self) -> dict | None:
        client = self.redis.client()
        try:
            state = client.hget("monitord:checkpoint", "state")
        finally:
            client.close()
        return None if state is None else json.loads(state)

    def active_monitor_port(self) -> int | None:
        """The port of the monitor that holds the lease (its token starts with its instance)."""
        client = self.redis.client()
        try:
            token = client.get("monitord:lease")
        finally:
            client.close()
        if token is None:
            return None
        instance = token.decode().split("/")[0]
        return int(instance.rsplit(":", 1)[1])

    def close(self) -> None:
        for process in self.processes:
            process.kill()


def samples(process: DaemonProcess) -> dict[str, int]:
    """Each detector's samples as ``GET /v1/detectors`` shows them on ``process``."""
    return {state["name"]: state["samples"] for state in get_json(process.url + "/v1/detectors")["detectors"]}


def samples_or_none(process: DaemonProcess) -> dict[str, int] | None:
    try:
        return samples(process)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def predictions_log(process: DaemonProcess) -> list[dict]:
    """Every prediction the monitor ``process`` applied, from its predictions log."""
    path = process.state / "predictions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def images_ok(process: DaemonProcess) -> int:
    return int(sum(value for (name, labels), value in process.metrics().items()
                   if name == "monitord_images_total" and ("outcome", "ok") in labels))


class Load:
    """Clients posting images over HTTP, each image once with an id of its own, retrying
    what is refused (503 or 429, as a client following Retry-After would) until answered."""

    def __init__(self, images: list[bytes], per_request: int = 16, concurrency: int = 4) -> None:
        self.images = images
        self.per_request = per_request
        self.concurrency = concurrency
        #: Image id (as the server named it) → 200 once answered with a prediction.
        self.answered: dict[str, int] = {}
        #: Status → requests answered so (refusals included).
        self.statuses: dict[int, int] = {}
        #: Retry-After of each 503, as sent.
        self.retry_after: list[str | None] = []
        #: Image ids of requests that never got an answer (the connection broke).
        self.broken: set[str] = set()
        #: Why each broken request broke (exception type: count).
        self.breaks: Counter[str] = Counter()
        #: Image ids of requests that could not connect (nothing listening).
        self.refused: set[str] = set()
        #: Image ids of requests refused with 503 at least once.
        self.unavailable: set[str] = set()

    async def run(self, url: str, prefix: str, count: int, retry: bool = True, stop: asyncio.Event | None = None,
                  deadline: float = 300) -> None:
        """Post ``count`` images to ``url``, ``per_request`` a request (ids ``<prefix>.<n>-<index>``)."""
        queue: asyncio.Queue[list[int]] = asyncio.Queue()
        for start in range(0, count, self.per_request):
            queue.put_nowait(list(range(start, min(count, start + self.per_request))))
        give_up = time.monotonic() + deadline
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def client() -> None:
                while not queue.empty() and not (stop is not None and stop.is_set()):
                    numbers = queue.get_nowait()
                    while time.monotonic() < give_up:
                        status = await self._post(session, url, prefix, numbers)
                        if status in (429, 503):
                            # As a client that honours Retry-After: no next request before it.
                            await asyncio.sleep(float(self.retry_after[-1] or 0.2) if status == 503 else 0.2)
                        if status is None or status == 200 or not retry or status not in (429, 503):
                            break
            await asyncio.gather(*(client() for _ in range(self.concurrency)))

    async def _post(self, session: aiohttp.ClientSession, url: str, prefix: str, numbers: list[int]) -> int | None:
        request_id = f"{prefix}.{numbers[0]}"  # the server names the parts <request id>-<index>
        form = aiohttp.FormData()
        for n in numbers:
            form.add_field("image", self.images[n % len(self.images)], filename=f"{n}.png", content_type="image/png")
        try:
            async with session.post(url + "/v1/predict", data=form, params={"id": request_id}) as response:
                status = response.status
                body = await response.json(content_type=None)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 503:
                    self.retry_after.append(response.headers.get("Retry-After"))
                    self.unavailable.update(f"{request_id}-{index}" for index in range(len(numbers)))
        except aiohttp.ClientConnectorError:
            self.refused.update(f"{request_id}-{index}" for index in range(len(numbers)))
            return None
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
            self.breaks[f"{type(error).__name__}: {error}"] += 1
            self.broken.update(f"{request_id}-{index}" for index in range(len(numbers)))
            return None
        if status == 200:
            for prediction in body["predictions"]:
                self.answered[prediction["id"]] = 200 if "class" in prediction else prediction.get("status", 0)
        return status

    def ok(self) -> set[str]:
        """Ids of the images answered with a prediction."""
        return {image for image, status in self.answered.items() if status == 200}
