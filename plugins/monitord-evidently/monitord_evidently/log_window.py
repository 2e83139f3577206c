"""The predictions of a window, read from the daemon's predictions log (newest first).

The monitor writes ``<state_dir>/predictions.jsonl`` and rotates it to ``.1``, ``.2``, ...
(``monitord.predictions_log``); a window may reach into the rotated files. Files are read
newest first and lines parsed from the end back, stopping once the window is full: a
report on the last thousand predictions parses a thousand lines, and opens an older file
only when the newer ones hold fewer.

With ``pipeline.workers`` the supervisor gives each process a state folder of its own
under ``<state_dir>/processes/`` and the log is the monitor's
(``processes/monitor/predictions.jsonl``): it is found there from the configured
``state_dir`` (``monitord report``) and from an inference process's own folder (the route).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import orjson
from monitord.predictions_log import predictions_log_path
from monitord.supervisor import MONITOR, PROCESSES_FOLDER, child_state_dir

from monitord_evidently.errors import ReportError
from monitord_evidently.window import Window


@dataclass
class LoggedPredictions:
    """The window's predictions, oldest first, as the log's JSON records."""

    records: list[dict[str, Any]]
    #: The files read, newest first.
    files: list[Path]
    #: Lines that were not a prediction record (cut short, or not JSON), left out.
    unreadable: int = 0
    #: Newest prediction's time in the log, even when the window held none (for the error).
    newest: str | None = field(default=None)


def live_log(state_dir: Path) -> Path:
    """Where the monitor of a daemon with this ``state_dir`` writes its predictions log."""
    state_dir = Path(state_dir)
    candidates = [state_dir, child_state_dir(state_dir, MONITOR)]
    if state_dir.parent.name == PROCESSES_FOLDER:  # one of the supervisor's inference processes
        candidates.append(child_state_dir(state_dir.parent.parent, MONITOR))
    for folder in candidates:
        if predictions_log_path(folder).is_file():
            return predictions_log_path(folder)
    return predictions_log_path(state_dir)


def log_files(state_dir: Path) -> list[Path]:
    """The live log and the rotated ones that exist, newest first."""
    live = live_log(state_dir)
    files = [live] if live.is_file() else []
    number = 1
    while (rotated := live.with_name(f"{live.name}.{number}")).is_file():
        files.append(rotated)
        number += 1
    return files


def read_window(state_dir: Path, window: Window, now: datetime | None = None) -> LoggedPredictions:
    """The predictions of ``window`` in the log of ``state_dir``; ``ReportError`` if none."""
    files = log_files(state_dir)
    live = live_log(state_dir)
    if not files:
        raise ReportError(f"there is no predictions log at {live}: the daemon's monitor writes it "
                          "(predictions_log.enabled, on by default) once images arrive; point --config or "
                          "state_dir at the daemon's state folder, or send it images first")
    cutoff = None
    if window.seconds is not None:
        cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=window.seconds)
    records: list[dict[str, Any]] = []
    unreadable = 0
    newest = None
    for record in _newest_first(files):
        if record is None:
            unreadable += 1
            continue
        if newest is None:
            newest = record["time"]
        if cutoff is not None and _time(record) < cutoff:
            break
        records.append(record)
        if window.count is not None and len(records) == window.count:
            break
    records.reverse()
    return LoggedPredictions(records, files, unreadable, newest)


def _newest_first(files: list[Path]) -> Iterator[dict[str, Any] | None]:
    """Each line's record from the end of the newest file backwards; None for a bad line."""
    for path in files:
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:  # rotated away while listing: its lines are in the next file
            continue
        for line in reversed(lines):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield None
                continue
            yield record if _is_prediction(record) else None


def _is_prediction(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("signals"), dict)
            and isinstance(record.get("class"), str) and isinstance(record.get("time"), str))


def _time(record: dict[str, Any]) -> datetime:
    try:
        moment = datetime.fromisoformat(record["time"])
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
