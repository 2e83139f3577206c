"""One daemon per state folder: a second `monitord run` on the same state_dir stops at once."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import drop_atomically, files_under, held_out_pngs
from monitord.state_lock import StateDirInUse, lock_state_dir


def test_a_second_daemon_on_the_same_state_dir_exits_at_once_naming_the_first(
    tmp_path: Path, digits_artifact: Path
) -> None:
    first = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact)
    first.start()
    try:
        second = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact)
        result = subprocess.run(
            [sys.executable, "-m", "monitord", "run", "--config", str(second.config)],
            cwd=tmp_path, env=second.env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 1, result.stderr
        assert f"pid {first.process.pid}" in result.stderr
        assert str(first.state.resolve()) in result.stderr
        # It stopped before anything else: no model, no port, no inbox work.
        assert "model" not in result.stderr.lower().replace("monitord", "")
        assert "HTTP on" not in result.stderr and "Traceback" not in result.stderr

        # The first one still owns the folder alone: each file processed exactly once.
        for index, (label, data) in enumerate(held_out_pngs(30)):
            drop_atomically(first.inbox, f"{label}/d{index}.png", data)
        wait_for(lambda: len(files_under(first.processed)) == 30, timeout=120, message="30 files processed")
        lines = (first.state / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 30
    finally:
        first.kill()


def test_the_lock_dies_with_its_holder_even_on_kill_9(tmp_path: Path, digits_artifact: Path) -> None:
    first = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact)
    first.start()
    first.kill()  # SIGKILL: no chance to release anything
    second = DaemonProcess(tmp_path, free_port(), artifact=digits_artifact)
    second.start()
    try:
        assert (tmp_path / "state" / "lock").read_text().strip() == str(second.process.pid)
    finally:
        second.kill()


def test_lock_file_is_private_and_a_held_lock_is_refused_in_process(tmp_path: Path) -> None:
    state = tmp_path / "fresh" / "state"
    held = lock_state_dir(state)
    try:
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(state / "lock").st_mode) == 0o600
        with pytest.raises(StateDirInUse, match=f"pid {os.getpid()}"):
            lock_state_dir(state)
    finally:
        held.release()
    lock_state_dir(state).release()  # free again once released
