"""What the demo tells its user: detector level changes as they happen, and a summary.

"Before the change" is decided by what the daemon had classified, not by the clock: an
alarm raised while the daemon had seen only clean images is a false alarm even if drifted
images were already waiting in the inbox. The delay after the change is counted in
images the daemon classified after the last clean one; it is read from ``/metrics``
polls, so it is exact to within the images classified between two polls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .demo_daemon import Observation

LEVEL_NAMES = {0: "ok", 1: "warning", 2: "drift"}


@dataclass
class LevelTimeline:
    """How one detector's level moved during the demo."""

    name: str
    type: str
    signal: str
    #: Level at the first poll of the demo (a reused daemon may already be alarmed).
    initial_level: int = 0
    #: Highest level reached while the daemon had classified only clean images.
    before_change: int = 0
    #: Level → (seconds since the demo started, images after the change) when it was
    #: first reached after the change.
    after_change: dict[int, tuple[float, int]] = field(default_factory=dict)
    #: Times the level rose to drift after the change; a detector that restarts after
    #: an alarm (Page-Hinkley) raises one per episode while the drift lasts.
    drift_alarms: int = 0
    level: int = 0


class LevelTracker:
    """Follows every detector's level through the ``/metrics`` polls."""

    def __init__(self, start_time: float, baseline_classified: int, clean: int) -> None:
        self.start_time = start_time
        self.baseline = baseline_classified
        self.clean = clean
        self.timelines: dict[str, LevelTimeline] = {}
        self.observations: list[Observation] = []

    def images_after_change(self, observation: Observation) -> int:
        """Images classified after the last clean one, at the time of ``observation``."""
        return max(0, observation.classified - self.baseline - self.clean)

    def add(self, observation: Observation) -> list[str]:
        """Record a poll; return a line for each false alarm and for each detector's first
        warning and first drift after the change (the plot shows every move)."""
        first = not self.observations
        self.observations.append(observation)
        seconds = observation.time - self.start_time
        after = self.images_after_change(observation)
        changed = observation.classified - self.baseline > self.clean
        lines = []
        for name, reading in observation.detectors.items():
            timeline = self.timelines.get(name)
            if timeline is None:
                timeline = LevelTimeline(name, reading.type, reading.signal)
                if first:
                    timeline.initial_level = timeline.level = reading.level
                self.timelines[name] = timeline
            rose_to = range(timeline.level + 1, reading.level + 1)
            timeline.level = reading.level
            if not rose_to:
                continue
            what = f"{LEVEL_NAMES.get(reading.level, reading.level)} (level {reading.level})"
            if not changed:
                if reading.level > timeline.before_change:  # each level once: the plot shows repeats
                    timeline.before_change = reading.level
                    lines.append(f"[{seconds:6.1f} s] {name}: {what} BEFORE the change, on clean images")
                continue
            timeline.drift_alarms += 2 in rose_to
            # Reaching drift passes the warning level too, even from a warning held
            # since before the change.
            new = [level for level in range(1, reading.level + 1) if level not in timeline.after_change]
            for level in new:
                timeline.after_change[level] = (seconds, after)
            if new:
                lines.append(f"[{seconds:6.1f} s] {name}: {what}, {after} images after the change")
        return lines


@dataclass(frozen=True)
class DemoOutcome:
    """The facts the summary reports."""

    scenario: str
    written: int
    clean: int
    inbox: str
    rate: float
    classified: int
    rejected: int
    #: Seconds from the first image to the first drifted one being written.
    change_seconds: float | None
    plot: str | None
    plot_note: str | None = None


def format_summary(outcome: DemoOutcome, tracker: LevelTracker) -> str:
    """The closing summary, a few aligned lines."""
    rows = [
        ("images written", f"{outcome.written} to {outcome.inbox} at {outcome.rate:g}/s: "
                           f"{outcome.clean} clean, then {outcome.written - outcome.clean} drifted"),
        ("drift", outcome.scenario),
        ("drift started", "never (no drifted image was written)" if outcome.change_seconds is None
         else f"{outcome.change_seconds:.1f} s after the first image, after {outcome.clean} clean images"),
        ("daemon handled", f"{outcome.classified} classified, {outcome.rejected} rejected"),
    ]
    for name in sorted(tracker.timelines):
        rows.append((name, describe_timeline(tracker.timelines[name])))
    if not tracker.timelines:
        rows.append(("detectors", "none in /metrics: the daemon's `detectors` setting lists none"))
    rows.append(("before the change", describe_false_alarms(tracker)))
    rows.append(("plot", outcome.plot if outcome.plot else f"not written: {outcome.plot_note}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(["summary:"] + [f"  {label.ljust(width)}  {text}" for label, text in rows])


def describe_false_alarms(tracker: LevelTracker) -> str:
    """Which detectors left level 0 on clean images: drift there is a false alarm; a
    warning is the price of an early warning level (DDM warns on a few unlucky errors)."""
    found = []
    for level in (2, 1):
        names = sorted(t.name for t in tracker.timelines.values() if t.before_change == level)
        if names:
            label = "false drift alarm from" if level == 2 else "warning (no drift) from"
            found.append(f"{label} {', '.join(names)}")
    return "; ".join(found) if found else "no detector left level 0"


def describe_timeline(timeline: LevelTimeline) -> str:
    parts = []
    if timeline.initial_level:
        parts.append(f"already at level {timeline.initial_level} when the demo started")
    if timeline.before_change:
        parts.append(f"{LEVEL_NAMES[timeline.before_change]} before the change")
    reached = timeline.after_change
    for level in (1, 2):
        # A warning first seen with or after the drift adds nothing.
        if level in reached and not (level == 1 and 2 in reached and reached[2][0] <= reached[1][0]):
            seconds, after = reached[level]
            parts.append(f"{LEVEL_NAMES[level]} {after} images after the change ({seconds:.1f} s)")
    if timeline.drift_alarms > 1:
        parts.append(f"{timeline.drift_alarms} drift alarms in all")
    if not reached:
        if timeline.level:
            parts.append(f"no new level after the change ({LEVEL_NAMES.get(timeline.level, timeline.level)} at the end)")
        else:
            parts.append("stayed ok (level 0)")
    return "; ".join(parts)
