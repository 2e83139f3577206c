"""The alert state machine of one detector instance: one alert per drift episode.

An episode opens (a ``firing`` notification) when the detector reaches a level: a drift
event or the ``drift`` level opens a ``MonitordDrift`` alert of severity ``critical``; a
warning event or the ``warning`` level opens a ``MonitordDriftWarning`` alert of severity
``warning`` (when ``alerts.warning_alerts`` is on). The episode follows the data, not the
clock: it stays open, without further notifications, while the detector keeps coming back
to the level (a detector that restarts after each detection, like PHT or DDM, re-detects a
change that persists), and resolves (a ``resolved`` notification with ``endsAt``) once the
detector has seen ``alerts.resolve_after_samples`` samples without coming back to the level
and at least ``alerts.cooldown_seconds`` passed since it last did. No samples, no resolve:
a traffic pause keeps the episode open. A detection that is the return to the reference
(``DriftEvent.toward_reference``) keeps an open episode open like any other, and opens no
episode when none is open: a return to normal is a resolve, never a new drift. A
still-firing alert is sent again every ``alerts.renotify_seconds`` (0: never). Drift counts
as being at or above the warning level, so an open warning episode lasts while the
detector is at drift too.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

from monitord.alerting.alert import DRIFT_ALERT, WARNING_ALERT, Alert
from monitord.detectors import LEVEL_VALUES, DetectorState, DriftEvent
from monitord.settings import AlertSettings

#: Severity -> (alertname, detector level that opens it).
SEVERITIES: dict[str, tuple[str, str]] = {
    "critical": (DRIFT_ALERT, "drift"),
    "warning": (WARNING_ALERT, "warning"),
}


#: Labels that do not identify an episode: a restart with another ``instance`` (another
#: port, say) continues the episodes saved before it, under the labels they fired with.
NOT_IDENTITY = frozenset({"instance"})


@dataclass(frozen=True)
class AlertSource:
    """Who raises the alerts: the labels common to a daemon's alerts, and the link back."""

    model: str
    instance: str
    generator_url: str


def default_instance(host: str, port: int) -> str:
    """The ``instance`` label Prometheus gives a scrape target ``<host>:<port>``: the
    daemon's own alerts carry it too, so the two can be matched. A wildcard bind
    (0.0.0.0, ::) names no host: the machine's host name stands in for it."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


@dataclass
class _Episode:
    alert: Alert
    #: Monotonic time the detector was last seen at (or above) the level.
    last_active: float
    #: The detector's sample count then: resolution needs samples since, not just time.
    last_active_samples: int
    last_notified: float

    def seen_at_level(self, now: float, samples: int) -> None:
        self.last_active, self.last_active_samples = now, samples

    def quiet(self, now: float, samples: int, settings: AlertSettings) -> bool:
        """Whether the detector stayed below the level long enough, in samples and seconds."""
        if samples < self.last_active_samples:  # a rebuilt detector counts from 0 again
            self.last_active_samples = samples
        return (samples - self.last_active_samples >= settings.resolve_after_samples
                and now - self.last_active >= settings.cooldown_seconds)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


class DetectorAlerts:
    """One detector instance's episodes, by severity. Not thread-safe: run on the loop."""

    def __init__(
        self,
        name: str,
        type_: str,
        signal: str,
        source: AlertSource,
        settings: AlertSettings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name, self.type, self.signal = name, type_, signal
        self.source = source
        self.settings = settings
        self._clock, self._wall = clock, wall
        self.open: dict[str, _Episode] = {}
        #: Severities whose level the detector reached by returning toward its reference,
        #: until it drops below that level again: reaching it that way opens nothing.
        self._returning: set[str] = set()

    def labels(self, severity: str) -> dict[str, str]:
        return {
            "alertname": SEVERITIES[severity][0],
            "detector": self.name,
            "type": self.type,
            "signal": self.signal,
            "model": self.source.model,
            "instance": self.source.instance,
            "severity": severity,
        }

    def observe(self, state: DetectorState, events: Sequence[DriftEvent] = ()) -> list[Alert]:
        """Take the detector's level after a batch (and the batch's events); return what to notify."""
        now = self._clock()
        notify: list[Alert] = []
        for severity, (_, level) in SEVERITIES.items():
            rank = LEVEL_VALUES[level]
            at_or_above = LEVEL_VALUES[state.level] >= rank or any(LEVEL_VALUES[e.level] >= rank for e in events)
            if not at_or_above:
                self._returning.discard(severity)
            episode = self.open.get(severity)
            if episode is None and severity == "warning" and not self.settings.warning_alerts:
                continue  # (an episode reopened from before a settings change still resolves)
            if episode is None:
                reached = [event for event in events if event.level == level]
                opening = [event for event in reached if event.toward_reference is not True]
                if reached and not opening:
                    self._returning.add(severity)
                if opening or (state.level == level and severity not in self._returning):
                    alert = self._new_alert(severity, state, opening[-1] if opening else None)
                    self.open[severity] = _Episode(alert, now, state.samples, now)
                    notify.append(alert)
                continue
            if at_or_above:
                episode.seen_at_level(now, state.samples)
            elif episode.quiet(now, state.samples, self.settings):
                del self.open[severity]
                notify.append(episode.alert.resolved(_utc(self._wall())))
                continue
            renotify = self.settings.renotify_seconds
            if renotify > 0 and now - episode.last_notified >= renotify:
                episode.last_notified = now
                notify.append(episode.alert.notified(_utc(self._wall())))
        return notify

    def tick(self, state: DetectorState) -> list[Alert]:
        """Periodic check without new samples: resolution and re-notification."""
        return self.observe(state, ())

    def resume(self, alert: Alert, state: DetectorState) -> None:
        """Reopen an episode saved before a restart; its count of quiet samples and its
        cool-down start again from the restored detector."""
        severity = alert.labels.get("severity", "")
        if severity in SEVERITIES:
            now = self._clock()
            self.open[severity] = _Episode(alert, now, state.samples, now)

    def continues(self, alert: Alert) -> bool:
        """Whether a saved ``alert`` is an episode of this detector: the same labels but
        for those that do not identify an episode (``NOT_IDENTITY``)."""
        severity = alert.labels.get("severity", "")
        if severity not in SEVERITIES:
            return False
        ours = {name: value for name, value in self.labels(severity).items() if name not in NOT_IDENTITY}
        return {name: value for name, value in alert.labels.items() if name not in NOT_IDENTITY} == ours

    def firing(self) -> list[Alert]:
        return [episode.alert for episode in self.open.values()]

    def _new_alert(self, severity: str, state: DetectorState, event: DriftEvent | None) -> Alert:
        level = SEVERITIES[severity][1]
        statistic = event.statistic if event is not None and event.statistic is not None else state.statistic
        if event is not None and event.threshold is not None:
            threshold = event.threshold
        else:
            threshold = state.threshold if level == "drift" else state.warning_threshold
        quiet = (f"has seen {self.settings.resolve_after_samples} samples without reaching the {level} level "
                 f"again (and at least {self.settings.cooldown_seconds:g} s passed)")
        summary = (
            f"Detector {self.name} ({self.type}) on signal {self.signal} of model {self.source.model} "
            f"reached {level}: statistic {_number(statistic)} against threshold {_number(threshold)}"
        )
        description = (
            f"The {self.type} detector {self.name!r} watching the {self.signal} signal of model "
            f"{self.source.model} on {self.source.instance} crossed its {level} threshold "
            f"(statistic {_number(statistic)}, threshold {_number(threshold)}): the images it sees "
            f"no longer look like its reference. Check GET /v1/detectors and the drift panels of the "
            f"dashboard; the alert resolves once the detector {quiet}."
        )
        started = _utc(self._wall())
        return Alert(
            labels=self.labels(severity),
            annotations={
                "statistic": _number(statistic),
                "threshold": _number(threshold),
                "summary": summary,
                "description": description,
            },
            starts_at=started,
            generator_url=self.source.generator_url,
            notified_at=started,
        )
