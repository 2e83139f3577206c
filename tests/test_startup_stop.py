"""SIGINT or SIGTERM during start-up stops the daemon at once: it does not first finish
training, loading the model or building the detectors, exits 0, and leaves nothing
half-written."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from daemon_process import DaemonProcess, free_port, wait_for
from monitord_torchvision.artifact import is_artifact


def exit_status(daemon: DaemonProcess, timeout: float = 60) -> int:
    assert daemon.process is not None
    try:
        return daemon.process.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.kill()
        raise AssertionError(f"the daemon did not stop within {timeout} s:\n{daemon.log()}") from None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_training_does_not_wait_for_the_training(tmp_path: Path, signum: int) -> None:
    daemon = DaemonProcess(tmp_path, free_port())  # no artifact: the default model is trained
    daemon.start(wait_ready=False)
    try:
        wait_for(lambda: "training the default digits model" in daemon.log(), timeout=120, message="training")
        daemon.process.send_signal(signum)
        assert exit_status(daemon) == 0
    finally:
        daemon.kill()
    log = daemon.log()
    assert "stopping during start-up" in log and "Traceback" not in log
    assert "trained digits_cnn" not in log  # it did not train to the end first
    # Nothing half-written where the next start would load it.
    assert not is_artifact(daemon.state / "model")

    # The next start trains afresh and leaves no staging folder of the abandoned one.
    again = DaemonProcess(tmp_path, free_port())
    again.start(timeout=300)
    try:
        assert is_artifact(daemon.state / "model")
        assert not list(daemon.state.glob(".model.*"))
    finally:
        again.kill()


def test_a_stop_at_any_moment_of_start_up_exits_cleanly(tmp_path: Path, digits_artifact: Path) -> None:
    """Signals at spread-out moments: before the event loop, while binding, loading the
    model, building detectors, restoring state; every time exit 0 and no traceback."""
    for attempt, delay in enumerate((0.0, 0.3, 0.8, 1.5, 2.5, 4.0)):
        workdir = tmp_path / f"run{attempt}"
        workdir.mkdir()
        daemon = DaemonProcess(workdir, free_port(), artifact=digits_artifact)
        daemon.start(wait_ready=False)
        try:
            time.sleep(delay)  # a moment to interrupt, not a wait for a condition
            signum = signal.SIGTERM if attempt % 2 else signal.SIGINT
            daemon.process.send_signal(signum)
            status = exit_status(daemon)
        finally:
            daemon.kill()
        log = daemon.log()
        if status == -signum:
            # Killed by the signal itself: only before the interpreter ran any of our code.
            assert log == "", log
        else:
            assert status in (0, 130), log
        assert "Traceback" not in log, log
