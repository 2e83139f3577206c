"""From detector updates to sink notifications, and open episodes across restarts.

The dispatcher keeps one ``DetectorAlerts`` state machine per detector instance. It is a
listener of the ``DetectorStage`` (so both model batches and labels from feedback feed
it), ticks every second for resolution and re-notification, and hands each notification
to every sink in order from its own task, so the pipeline never waits on a sink.

Open episodes travel with the monitor's checkpoint (``state``/``reopen``), and with the
in-process transport are also saved to ``<state_dir>/alerts.json`` whenever they change.
A restart or a takeover resolves nothing: the saved episodes reopen with the same labels
and ``startsAt`` (the same fingerprint; one with another ``instance``, on another port say,
continues them under the labels they fired with), and resolve as any episode does once the
detector (restored from the same checkpoint, see ``monitord.snapshots``) has seen
``alerts.resolve_after_samples`` samples without coming back to the level. An episode of a
detector no longer configured resolves at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from monitord.alerting.alert import Alert
from monitord.alerting.episodes import AlertSource, DetectorAlerts
from monitord.alerting.sinks import Sink
from monitord.detectors import DetectorStage, DriftEvent, WatchedDetector
from monitord.settings import AlertSettings
from monitord.state_files import set_aside, write_json_durably

log = logging.getLogger("monitord.alerts")

STATE_FILE = "alerts.json"


class AlertDispatcher:
    def __init__(
        self,
        settings: AlertSettings,
        sinks: Sequence[Sink],
        source: AlertSource,
        state_dir: Path | None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        tick_seconds: float = 1.0,
    ) -> None:
        self.settings = settings
        self.sinks = list(sinks)
        self.source = source
        #: Where open episodes are kept whenever they change (the in-process transport);
        #: None when the monitor's checkpoint carries them.
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self._clock, self._wall = clock, wall
        self.tick_seconds = tick_seconds
        self.machines: dict[str, tuple[WatchedDetector, DetectorAlerts]] = {}
        self._queue: asyncio.Queue[list[Alert] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._saved: list[dict] | None = None

    def attach(self, stage: DetectorStage) -> None:
        """Watch every detector of ``stage``."""
        for watched in stage.detectors:
            spec = watched.spec
            machine = DetectorAlerts(spec.label, spec.type, spec.signal_label, self.source, self.settings,
                                     self._clock, self._wall)
            self.machines[spec.label] = (watched, machine)
        stage.listeners.append(self.observe)

    def observe(self, updates: list[tuple[WatchedDetector, list[DriftEvent]]]) -> None:
        """The detector stage's listener: runs on the event loop after every update."""
        notify: list[Alert] = []
        for watched, events in updates:
            entry = self.machines.get(watched.spec.label)
            if entry is not None:
                notify.extend(entry[1].observe(watched.detector.state, events))
        if notify:
            self._queue.put_nowait(notify)

    def tick(self) -> None:
        notify: list[Alert] = []
        for watched, machine in self.machines.values():
            if machine.open:
                notify.extend(machine.tick(watched.detector.state))
        if notify:
            self._queue.put_nowait(notify)

    def firing(self) -> list[Alert]:
        return [alert for _, machine in self.machines.values() for alert in machine.firing()]

    def reopen(self, saved: Sequence[Alert]) -> None:
        """Continue the episodes open before (a restart, a takeover), replacing those in
        memory; the ones whose detector is gone resolve. Call before ``start`` or while
        running (a monitor back from standby)."""
        for _, machine in self.machines.values():
            machine.open.clear()
        self._saved = [alert.to_state() for alert in saved]
        orphaned = []
        for alert in saved:
            entry = self.machines.get(alert.labels.get("detector", ""))
            if entry is not None and entry[1].continues(alert):
                entry[1].resume(alert, entry[0].detector.state)
            else:
                orphaned.append(alert.resolved(datetime.fromtimestamp(self._wall(), timezone.utc)))
        firing = self.firing()
        if firing:
            log.info("%d alert(s) still firing from before; their episodes continue", len(firing))
        if orphaned:
            log.info("resolving %d alert(s) of detectors no longer configured", len(orphaned))
            self._queue.put_nowait(orphaned)

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        """Start the sinks (they deliver what they spooled, and keep alive what still fires),
        then dispatch."""
        firing = self.firing()
        for sink in self.sinks:
            await sink.start(firing)
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="alerts-dispatch"),
            asyncio.create_task(self._ticker(), name="alerts-tick"),
        ]

    async def close(self) -> None:
        """Hand queued notifications to the sinks, then close them (they flush or keep a spool)."""
        ticker = self._tasks[1] if len(self._tasks) > 1 else None
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        if self._tasks:
            self._queue.put_nowait(None)
            await asyncio.gather(self._tasks[0], return_exceptions=True)
        for sink in self.sinks:
            try:
                await sink.close()
            except Exception:
                log.exception("sink %s failed to close", getattr(sink, "name", sink))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            self.tick()

    async def _dispatch(self) -> None:
        while True:
            alerts = await self._queue.get()
            if alerts is None:
                return
            await self._save()
            for sink in self.sinks:
                try:
                    await sink.send(alerts)
                except Exception:
                    log.exception("sink %s failed to take %d notification(s)", getattr(sink, "name", sink), len(alerts))

    async def _save(self) -> None:
        state = [alert.to_state() for alert in self.firing()]
        if state == self._saved or self.state_path is None:
            return
        try:
            await asyncio.to_thread(self._write, state)
            self._saved = state
        except OSError as error:
            log.error("cannot save open alerts to %s: %s (a restart would forget them)", self.state_path, error)

    def _write(self, state: list[dict]) -> None:
        assert self.state_path is not None
        write_json_durably(self.state_path, {"open": state})


def read_open_alerts(state_dir: Path) -> list[dict]:
    """The open episodes an earlier run kept in ``<state_dir>/alerts.json`` (their state
    form); none when there is no file, and none, the file set aside, when it is unreadable."""
    path = Path(state_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        states = data.get("open", [])
        for state in states:
            Alert.from_state(state)  # each must be readable
        return states
    except FileNotFoundError:
        return []
    except OSError as error:
        log.error("cannot read open alerts from %s (%s); starting without them", path, error)
        return []
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        log.error("open alerts in %s are unreadable (%s); starting without them", path, error)
        set_aside(path, "corrupt")
        return []
