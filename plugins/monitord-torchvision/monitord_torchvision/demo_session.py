"""One demo run against a ready daemon: write the scenario at a steady rate, follow the
detectors, wait for the daemon to catch up, and collect what happened.

``/metrics`` is polled from a background thread so that a slow scrape never delays an
image; everything the user sees is printed from the calling thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .demo_daemon import DaemonClient, Observation, StartedDaemon
from .demo_files import InboxWriter
from .demo_report import LEVEL_NAMES, LevelTracker
from .errors import DemoError
from .scenario import DemoImage

#: Seconds between two ``/metrics`` polls.
POLL_INTERVAL = 0.2
#: Seconds between two progress lines.
PROGRESS_INTERVAL = 10.0


class _Poller(threading.Thread):
    """Scrapes ``/metrics`` every ``interval`` seconds into a queue.

    A busy daemon may miss a scrape; only ``patience`` seconds without any answer count
    as an error (queued for the main thread to raise).
    """

    def __init__(self, client: DaemonClient, interval: float, patience: float) -> None:
        super().__init__(name="monitord-demo-poller", daemon=True)
        self.client = client
        self.interval = interval
        self.patience = patience
        self.results: queue.SimpleQueue[Observation | DemoError] = queue.SimpleQueue()
        self._stop_event = threading.Event()

    def run(self) -> None:
        answered = time.monotonic()
        while not self._stop_event.is_set():
            try:
                self.results.put(self.client.observe())
                answered = time.monotonic()
            except DemoError as error:
                if time.monotonic() - answered > self.patience:
                    self.results.put(DemoError(f"{error} (no answer for {self.patience:g} s)"))
                    return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


@dataclass
class SessionResult:
    #: Epoch seconds at which each image was written, by image number.
    write_times: list[float]
    #: Epoch seconds just before the first image was written (the plot's time origin).
    start_time: float
    #: When the first drifted image was written; None when none was.
    change_time: float | None
    baseline: Observation
    last: Observation

    @property
    def written(self) -> int:
        return len(self.write_times)


class DemoSession:
    """Writes ``images`` through ``writer`` at ``rate`` per second while following the daemon."""

    def __init__(
        self,
        client: DaemonClient,
        writer: InboxWriter,
        images: Sequence[DemoImage],
        *,
        rate: float,
        clean: int,
        say: Callable[[str], None],
        started: StartedDaemon | None = None,
        stall_timeout: float = 30.0,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.client = client
        self.writer = writer
        self.images = images
        self.rate = rate
        self.clean = clean
        self.say = say
        self.started = started
        self.stall_timeout = stall_timeout
        self.poll_interval = poll_interval
        self.tracker: LevelTracker | None = None
        self._progress_at = 0.0
        self._handled_seen = -1
        self._progress_since = 0.0
        self._baseline_handled = 0
        self._write_times: list[float] = []

    def run(self) -> SessionResult:
        baseline = self.client.observe()
        start_time = time.time()
        self.tracker = LevelTracker(start_time, baseline.classified, self.clean)
        self.tracker.add(baseline)
        self._baseline_handled = baseline.classified + baseline.rejected
        for timeline in self.tracker.timelines.values():
            if timeline.initial_level:
                self.say(
                    f"note: {timeline.name} is already at {LEVEL_NAMES.get(timeline.level)} before the demo; "
                    "restart the daemon for a clean start"
                )
        poller = _Poller(self.client, self.poll_interval, patience=self.stall_timeout)
        poller.start()
        change_time = None
        started_mono = time.monotonic()
        self._progress_since = self._progress_at = started_mono
        try:
            for image in self.images:
                self._wait_until(started_mono + image.seq / self.rate, poller)
                if image.seq == self.clean:
                    change_time = time.time()
                    self.say(self._stamp(f"the drift starts: {self.clean} clean images written, drifted ones follow"))
                self.writer.write(image)
                self._write_times.append(time.time())
            self.say(self._stamp(f"all {self._written} images written; waiting for the daemon to finish them"))
            last = self._drain(poller)
        finally:
            poller.stop()
        return SessionResult(self._write_times, start_time, change_time, baseline, last)

    # -- following the daemon ----------------------------------------------------------------

    @property
    def _written(self) -> int:
        return len(self._write_times)

    def _stamp(self, text: str) -> str:
        assert self.tracker is not None
        return f"[{time.time() - self.tracker.start_time:6.1f} s] {text}"

    def _wait_until(self, due: float, poller: _Poller) -> None:
        while True:
            self._handle(poller)
            remaining = due - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, 0.05))

    def _handle(self, poller: _Poller) -> Observation | None:
        """Print what new polls show; raise when the daemon died, vanished or stalled."""
        assert self.tracker is not None
        latest = None
        while True:
            try:
                result = poller.results.get_nowait()
            except queue.Empty:
                break
            if isinstance(result, DemoError):
                self._check_alive()
                raise result
            latest = result
            for line in self.tracker.add(result):
                self.say(line)
        self._check_alive()
        if latest is not None:
            self._check_progress(latest)
        return latest

    def _check_alive(self) -> None:
        if self.started is not None and self.started.exit_code() is not None:
            raise DemoError(
                f"the daemon exited with status {self.started.exit_code()} during the demo; "
                f"the end of {self.started.log_name}:\n{self.started.log_tail()}"
            )

    def _check_progress(self, observation: Observation) -> None:
        assert self.tracker is not None
        now = time.monotonic()
        handled = observation.classified + observation.rejected - self._baseline_handled
        if handled != self._handled_seen:
            self._handled_seen, self._progress_since = handled, now
        elif handled < self._written and now - self._progress_since > self.stall_timeout:
            if handled <= 0:
                raise DemoError(
                    f"the daemon at {self.client.url} took none of the {self._written} images written to "
                    f"{self.writer.inbox} in {self.stall_timeout:g} s; it is probably watching another "
                    "folder. Run the demo with the daemon's settings (the same --config and MONITORD_* "
                    "variables)"
                )
            raise DemoError(
                f"the daemon stopped taking images: {handled} of {self._written} handled, none in the "
                f"last {self.stall_timeout:g} s; check its log"
            )
        if now - self._progress_at >= PROGRESS_INTERVAL:
            self._progress_at = now
            levels = ", ".join(
                f"{name} {reading.level}" for name, reading in sorted(observation.detectors.items())
            )
            self.say(self._stamp(f"written {self._written}, classified "
                                 f"{observation.classified - self.tracker.baseline}; levels: {levels or 'none'}"))

    def _drain(self, poller: _Poller) -> Observation:
        while True:
            observation = self._handle(poller)
            if observation is not None:
                if observation.classified + observation.rejected - self._baseline_handled >= self._written:
                    return observation
            time.sleep(0.05)
