"""Which predictions a window takes from the log: by count, by time, across rotated files."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from monitord.items import Prediction
from monitord.predictions_log import PredictionsLog, predictions_log_path

from monitord_evidently.log_window import read_window
from monitord_evidently.window import WindowError, parse_window

START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def write_predictions(state_dir: Path, count: int, max_bytes: int = 50 << 20) -> None:
    """``count`` predictions one second apart from START, ids p0, p1, ..."""
    log = PredictionsLog(predictions_log_path(state_dir), max_bytes, backups=5)
    try:
        for row in range(count):
            log.write([Prediction(id=f"p{row}", source="test", class_name="1", class_index=1, confidence=0.9,
                                  signals={"confidence": 0.9}, time=(START + timedelta(seconds=row)).isoformat())])
    finally:
        log.close()


@pytest.mark.parametrize(("text", "count", "seconds"), [
    ("1000", 1000, None), (" 7 ", 7, None), ("45s", None, 45.0), ("30m", None, 1800.0), ("1h", None, 3600.0),
    ("1.5h", None, 5400.0), ("2d", None, 172800.0), ("2H", None, 7200.0),
])
def test_windows_are_counts_or_durations(text: str, count: int | None, seconds: float | None) -> None:
    window = parse_window(text)
    assert (window.count, window.seconds) == (count, seconds)


@pytest.mark.parametrize(("text", "said"), [
    ("0", "positive count"), ("ten", "neither a count nor a duration"), ("1w", "unit s, m, h or d"),
    ("-5", "neither a count nor a duration"), ("0m", "positive duration"), ("", "neither"),
])
def test_a_bad_window_says_what_to_write(text: str, said: str) -> None:
    with pytest.raises(WindowError, match=said):
        parse_window(text)


def test_a_count_takes_the_newest_predictions_across_rotated_files(tmp_path: Path) -> None:
    write_predictions(tmp_path, 300, max_bytes=4000)  # rotates every few dozen lines
    live = predictions_log_path(tmp_path)
    assert live.with_name(live.name + ".2").is_file()
    taken = read_window(tmp_path, parse_window("150"))
    assert [record["id"] for record in taken.records] == [f"p{row}" for row in range(150, 300)]
    assert len(taken.files) >= 3


def test_a_duration_takes_the_predictions_since_then(tmp_path: Path) -> None:
    write_predictions(tmp_path, 200)
    now = START + timedelta(seconds=199)
    taken = read_window(tmp_path, parse_window("1m"), now=now)
    assert [record["id"] for record in taken.records] == [f"p{row}" for row in range(139, 200)]


def test_unreadable_lines_are_left_out_and_counted(tmp_path: Path) -> None:
    write_predictions(tmp_path, 40)
    with predictions_log_path(tmp_path).open("a") as handle:
        handle.write('{"id": "cut short", "sig\nnot json at all\n')
    taken = read_window(tmp_path, parse_window("1000"))
    assert len(taken.records) == 40 and taken.unreadable == 2


def test_with_workers_the_monitors_log_is_found_from_either_folder(tmp_path: Path) -> None:
    monitor = tmp_path / "processes" / "monitor"
    write_predictions(monitor, 40)
    (tmp_path / "processes" / "inference-0").mkdir()
    for state_dir in (tmp_path, tmp_path / "processes" / "inference-0"):
        taken = read_window(state_dir, parse_window("1000"))
        assert len(taken.records) == 40 and taken.files == [predictions_log_path(monitor)]
