"""The monitor role in a daemon: from the model card to a running ``MonitorRunner``.

It never loads the model: the card an inference process published tells it the classes
and the reference signals. It builds the detectors on that reference (off the event loop:
calibration may take a second), the feedback join, the predictions log and the alerting
(with the sinks the daemon built), then runs the loop over the stream until stopped, and
checkpoints on the way out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

from monitord.alerting.dispatcher import AlertDispatcher
from monitord.alerting.episodes import AlertSource
from monitord.alerting.sinks import Sink
from monitord.background import BackgroundJobs
from monitord.detectors import DetectorStage
from monitord.feedback import Feedback
from monitord.metrics import Metrics
from monitord.monitor.estimated_accuracy import EstimatedAccuracy
from monitord.monitor.monitor import Monitor
from monitord.monitor.runner import MonitorRunner
from monitord.predictions_log import PredictionsLog, predictions_log_path
from monitord.reference_cache import ReferenceCache, activate
from monitord.settings import Settings
from monitord.snapshots import DetectorSnapshots, reference_fingerprint
from monitord.transport.contract import Transport
from monitord.transport.entries import ModelCard
from monitord.transport.local import LocalTransport

log = logging.getLogger("monitord")


class MonitorRole:
    """Owns the monitor's objects and its loop; ``status`` serves ``GET /v1/detectors``."""

    def __init__(self, settings: Settings, metrics: Metrics, transport: Transport, sinks: list[Sink],
                 alert_source: AlertSource, factory_for: Callable[[str], Callable[..., Any]],
                 background: BackgroundJobs, on_state: Callable[[bool, str], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.transport = transport
        self.sinks = sinks
        self.alert_source = alert_source
        self._factory_for = factory_for
        self._background = background
        self._on_state = on_state
        self.monitor: Monitor | None = None
        #: What the card says of the reference (source, samples, ...), once it came.
        self.reference: dict[str, Any] | None = None
        self.runner: MonitorRunner | None = None
        self.alerting: AlertDispatcher | None = None
        self.predictions_log: PredictionsLog | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Wait for the model card, build everything, and run the loop in a task."""
        self._on_state(False, "monitor: waiting for an inference process to publish its model")
        link = self.transport.monitor_link()
        card: ModelCard = await link.model_card()
        self.reference = dict(card.reference) or None
        self._on_state(False, "monitor: building detectors")
        # Detectors keep what they compute from the reference (calibrations) across restarts.
        activate(ReferenceCache.for_daemon(self.settings.model_artifact, self.settings.state_dir))
        detectors = await self._background.run(
            "build-detectors", DetectorStage.build, self.settings.detectors, self._factory_for,
            card.reference_signals, self.metrics,
        )
        feedback = Feedback(self.settings.feedback, self.metrics)
        feedback.attach(card.class_names, detectors)
        self.metrics.declare_classes(card.class_names)
        if "inference" not in self.metrics.roles:  # else inference described it, with the device
            self.metrics.describe_build(model=card.name)
        snapshots = DetectorSnapshots(detectors, reference_fingerprint(card.name, card.reference_signals))
        self.predictions_log = self._open_predictions_log()
        if self.settings.alerts.enabled:
            keep_in = Path(self.settings.state_dir) if isinstance(self.transport, LocalTransport) else None
            source = dataclasses.replace(self.alert_source, model=card.name)
            self.alerting = AlertDispatcher(self.settings.alerts, self.sinks, source, keep_in)
            self.alerting.attach(detectors)
        estimated_accuracy = EstimatedAccuracy.for_reference(
            card.reference, card.reference_signals, self.settings.estimated_accuracy.window, detectors, self.metrics)
        self.monitor = Monitor(self.metrics, detectors, feedback, snapshots, self.predictions_log, self.alerting,
                               reference=self.reference, estimated_accuracy=estimated_accuracy)
        self.runner = MonitorRunner(self.monitor, link, self._on_state, self._after_restore)
        self._task = asyncio.create_task(self.runner.run(self._stop), name="monitor")

    async def _after_restore(self) -> None:
        """The sinks start with the episodes the first restore reopened (the alertmanager
        sink keeps those alive); a monitor back from standby has them started already. A
        snapshot file that did not fit is kept aside for inspection."""
        assert self.monitor is not None
        if not self.monitor.snapshot_fitted and isinstance(self.transport, LocalTransport):
            self.transport.monitor_link().set_aside_snapshot()
        if self.alerting is not None and not self.alerting.started:
            await self.alerting.start()

    async def stop(self) -> None:
        """Checkpoint and stop the loop (inference has drained already), then the alerting."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.alerting is not None:
            await self.alerting.close()
        if self.predictions_log is not None:
            self.predictions_log.close()

    @property
    def active(self) -> bool:
        """Whether this process is the active monitor now (not standing by)."""
        return self.runner is not None and self.runner.active

    def status(self) -> dict[str, Any] | None:
        return self.monitor.status() if self.monitor is not None else None

    def _open_predictions_log(self) -> PredictionsLog | None:
        options = self.settings.predictions_log
        if not options.enabled:
            return None
        return PredictionsLog(predictions_log_path(Path(self.settings.state_dir)), options.max_bytes, options.backups)
