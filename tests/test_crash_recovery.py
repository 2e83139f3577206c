"""Crashes and restarts with the real daemon: ``kill -9`` loses no file and counts none
twice, interrupted moves are completed, a file that keeps stopping the daemon is set
aside, and detectors continue from their snapshot."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import drop_atomically, files_under, held_out_pngs
from gated_model import gated_model, gated_model_settings

from monitord.builtin.folder_ledger import FileIdentity, Ledger


def restart(first: DaemonProcess, artifact: Path, settings: str = "") -> DaemonProcess:
    """A new daemon process on the same inbox and state folder, like a supervisor's restart."""
    second = DaemonProcess(first.workdir, free_port(), artifact=artifact, extra_settings=settings)
    second.start()
    return second


def ledger_state(process: DaemonProcess) -> tuple[dict[str, int], list]:
    ledger = Ledger(process.state / "ledger.sqlite3")
    try:
        return ledger.totals(), ledger.unfinished()
    finally:
        ledger.close()


def test_kill_9_mid_turn_then_restart_processes_every_file_exactly_once(tmp_path: Path, digits_artifact: Path) -> None:
    # The gated model holds the folder thread's turn in its first image: 64 files claimed
    # (folder.max_in_flight), 36 more waiting, none done, at the kill.
    env, gate, entered = gated_model(tmp_path)
    digits = held_out_pngs(100)
    for index, (label, data) in enumerate(digits):
        drop_atomically(tmp_path / "inbox", f"{label}/d{index:03}.png", data)
    first = DaemonProcess(tmp_path, free_port(), env=env, extra_settings=(
        'sources = ["folder"]\ndetectors = []\n' + gated_model_settings(gate, entered) + "[folder]\nmax_in_flight = 64\n"))
    try:
        first.start()
        wait_for(entered.exists, message="the first file in preprocessing")
        first.process.kill()
        first.process.wait(10)
    finally:
        gate.unlink()
        first.kill()
    assert len(files_under(first.inbox)) == 100 and files_under(first.processed) == []
    totals, unfinished = ledger_state(first)
    assert totals == {} and len(unfinished) == 64 and not any(entry.decided for entry in unfinished)

    second = restart(first, digits_artifact)
    try:
        wait_for(lambda: len(files_under(second.processed)) == 100, message="every file processed")
        wait_for(lambda: files_under(second.inbox) == [], message="an empty inbox")
        names = sorted(path.relative_to(second.processed).as_posix() for path in files_under(second.processed))
        assert names == sorted(f"{label}/d{index:03}.png" for index, (label, _) in enumerate(digits))
        assert files_under(second.failed) == []
        assert all(path.with_name(path.name + ".json").exists() for path in files_under(second.processed))
        assert "64 file(s) were being processed when the daemon last stopped" in second.log()
        totals, unfinished = ledger_state(second)
        assert totals == {"ok": 100} and unfinished == []
        assert second.metric("monitord_images_total", source="folder", outcome="ok") == 100
    finally:
        second.kill()


def test_a_move_interrupted_after_the_outcome_was_stored_is_completed_not_rerun(daemon, tmp_path: Path) -> None:
    inbox, processed = tmp_path / "inbox", tmp_path / "processed"
    [(label, data)] = held_out_pngs(1)
    path = drop_atomically(inbox, f"{label}/decided.png", data)
    target = processed / f"{label}/decided.png"
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    ledger.begin(f"{label}/decided.png", FileIdentity.of(path))
    ledger.decide(f"{label}/decided.png", "ok", target, target.with_name("decided.png.json"), '{"recorded": true}')
    ledger.close()

    process = daemon()
    wait_for(lambda: target.exists(), message="the recorded move")
    assert json.loads(target.with_name("decided.png.json").read_text()) == {"recorded": True}
    assert not path.exists()
    # Completed from the ledger: the model never saw it again.
    assert process.metric("monitord_images_total", source="folder", outcome="ok") == 0
    assert not (process.state / "predictions.jsonl").exists() or "decided.png" not in (
        process.state / "predictions.jsonl").read_text()
    assert ledger_state(process) == ({"ok": 1}, [])


def test_a_file_the_daemon_keeps_stopping_on_is_set_aside(daemon, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    [(label, data)] = held_out_pngs(1)
    path = drop_atomically(inbox, f"{label}/poison.png", data)
    ledger = Ledger(tmp_path / "state" / "ledger.sqlite3")
    for _ in range(3):  # three runs died while this file was in flight
        ledger.begin(f"{label}/poison.png", FileIdentity.of(path))
    ledger.close()

    process = daemon()
    reason_file = process.failed / f"{label}/poison.png.reason.txt"
    wait_for(reason_file.exists, message="the file set aside")
    reason = reason_file.read_text()
    assert "stopped 3 times" in reason and "folder.max_attempts" in reason
    assert (process.failed / f"{label}/poison.png").exists() and not path.exists()
    assert process.metric("monitord_images_total", source="folder", outcome="rejected") == 1


def detector_samples(process: DaemonProcess) -> dict[str, int]:
    with urllib.request.urlopen(process.url + "/v1/detectors", timeout=5) as response:
        return {d["name"]: d["samples"] for d in json.load(response)["detectors"]}


def post_digits(process: DaemonProcess, count: int) -> None:
    for label, data in held_out_pngs(count):
        request = urllib.request.Request(process.url + "/v1/predict", data=data,
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


def test_detectors_continue_after_sigterm_and_after_kill_9(daemon, digits_artifact: Path) -> None:
    settings = "[snapshots]\ninterval_seconds = 0.5\n"
    first = daemon(settings)
    post_digits(first, 60)
    before = detector_samples(first)
    assert before["pht_confidence"] == 60
    assert first.terminate() == 0  # graceful: a snapshot at shutdown

    second = restart(first, digits_artifact, settings)
    try:
        assert detector_samples(second) == before
        post_digits(second, 40)
        assert detector_samples(second)["pht_confidence"] == 100
        time.sleep(1.5)  # a periodic snapshot has been taken since
        second.process.kill()
        second.process.wait(10)
    finally:
        second.kill()

    third = restart(second, digits_artifact, settings)
    try:
        assert detector_samples(third)["pht_confidence"] == 100
        assert "restored detectors" in third.log()
    finally:
        third.kill()


def test_a_corrupt_snapshot_is_set_aside_and_the_daemon_starts(daemon, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "detectors.json").write_text("{not json", encoding="utf-8")
    (state / "alerts.json").write_text('{"open": [{"labels": 3}]}', encoding="utf-8")
    process = daemon()
    assert all(samples == 0 for samples in detector_samples(process).values())
    assert len(list(state.glob("detectors.json.corrupt-*"))) == 1
    assert len(list(state.glob("alerts.json.corrupt-*"))) == 1
    assert "detector snapshot" in process.log() and "set detectors.json aside" in process.log()
    post_digits(process, 5)
    assert detector_samples(process)["pht_confidence"] == 5
