"""The folder source in worker processes (``pipeline.workers``), on the real daemon.

What must hold: with ``sources = ["folder"]`` the workers, not the main process, watch
the inbox, each over its ``Partition`` of the files; every file ends up in
``processed/`` or ``failed/`` exactly once and every prediction reaches the main
process's metrics, detectors and predictions log once; a worker killed mid-burst is
started again and nothing is lost or doubled; after the whole daemon is killed, a start
with a different number of workers (or none) completes what the last one left; and a
SIGTERM leaves every file either done once or untouched in the inbox.

Moments "mid-burst" are picked by looking, not by timing: a process is stopped
(SIGSTOP) while the test reads the shared ledger, and is killed only when the ledger
shows files claimed and not yet decided.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import drop_atomically, files_under, held_out_pngs
from gated_model import gated_model, gated_model_settings
from monitord.sources import Partition

WORKERS = 2
#: Batches fill to 64 or wait 2 s: a burst leaves a partial batch in flight in each worker
#: for long enough to be seen, and the end of a run waits no more than that.


def settings(workers: int, pipeline: str = "") -> str:
    return f'sources = ["folder"]\n[pipeline]\nworkers = {workers}\n{pipeline}'


def gated_settings(workers: int, gate: Path, entered: Path) -> str:
    """Workers whose model holds each image in preprocessing while ``gate`` exists: their
    first batches stay claimed and undecided for as long as a test needs (a burst is over
    in a fraction of a second otherwise)."""
    return (f'sources = ["folder"]\ndetectors = []\n[pipeline]\nworkers = {workers}\n'
            + gated_model_settings(gate, entered))


# -- processes ---------------------------------------------------------------------------


def worker_pids(main_pid: int) -> dict[int, int]:
    """The main process's ingest workers, by their ``--index``."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) != main_pid or b"monitord.ingest_worker" not in arguments:
            continue
        workers[int(arguments[arguments.index(b"--index") + 1])] = int(entry.name)
    return workers


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"  # exited, waiting to be reaped


def stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] in "Tt"


def watched_inodes(pid: int) -> set[int]:
    """Inodes ``pid`` watches with inotify (what the folder source's watcher sets up)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("inotify "):
                fields = dict(field.split(":", 1) for field in line.split()[1:])
                inodes.add(int(fields["ino"], 16))
    return inodes


# -- files, the ledger and the daemon's answers -----------------------------------------------


def drop_digits(inbox: Path, count: int, prefix: str = "d",
                identities: dict[str, tuple[int, int, int]] | None = None) -> dict[str, bytes]:
    """``count`` held-out digits in their label's sub-folder (the 300 first, over again
    under other names if more are asked for), each written beside the inbox and renamed
    into it; returns name -> bytes, and fills ``identities`` with each file's (inode,
    size, mtime) as it was before the rename (which keeps them)."""
    digits = held_out_pngs(min(count, 300))
    dropped = {}
    for index in range(count):
        label, data = digits[index % len(digits)]
        name = f"{label}/{prefix}{index:03}.png"
        target = inbox / name
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = inbox.parent / f".staging-{os.getpid()}-{target.name}"
        staging.write_bytes(data)
        if identities is not None:
            stat = staging.stat()
            identities[name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        os.replace(staging, target)
        dropped[name] = data
    return dropped


def relative_files(folder: Path, pattern: str = "*.png") -> list[str]:
    """Files under ``folder`` by their path below it, sorted, duplicates kept."""
    return sorted(path.relative_to(folder).as_posix() for path in files_under(folder, pattern))


def ledger_rows(state: Path) -> list[tuple[str, str | None]]:
    """``(relative, outcome)`` of each unfinished row, read without taking any lock."""
    path = state / "ledger.sqlite3"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return [(row[0] if isinstance(row[0], str) else row[0].decode("utf-8", "surrogateescape"), row[1])
                for row in db.execute("SELECT relative, outcome FROM files")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def ledger_after_stop(state: Path) -> tuple[int, dict[str, int]]:
    """Unfinished rows and the totals, once no daemon runs."""
    db = sqlite3.connect(state / "ledger.sqlite3")
    try:
        unfinished = db.execute("SELECT count(*) FROM files").fetchone()[0]
        totals = dict(db.execute("SELECT outcome, count FROM totals").fetchall())
        return unfinished, totals
    finally:
        db.close()


def kill_when_claims_are_open(pid: int, state: Path, owned=lambda relative: True) -> int:
    """Stop ``pid``, and kill it (-9) if the ledger shows claimed, undecided files that
    ``owned`` accepts; otherwise let it go on and look again. Returns how many there were."""
    seen = 0

    def attempt() -> bool:
        nonlocal seen
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: stopped(pid), timeout=5, interval=0.005, message="the process stopped")
        open_claims = [relative for relative, outcome in ledger_rows(state) if outcome is None and owned(relative)]
        if open_claims:
            seen = len(open_claims)
            os.kill(pid, signal.SIGKILL)
            return True
        os.kill(pid, signal.SIGCONT)
        return False

    wait_for(attempt, timeout=30, interval=0.02, message="files claimed and not yet decided")
    return seen


def detector_samples(process: DaemonProcess) -> dict[str, int]:
    """Samples of each detector fed by predictions (not by labels: signal ``error``)."""
    with urllib.request.urlopen(process.url + "/v1/detectors", timeout=5) as response:
        detectors = json.loads(response.read())["detectors"]
    return {d["name"]: d["samples"] for d in detectors if d["signal"] != "error"}


def restart(first: DaemonProcess, artifact: Path, settings: str) -> DaemonProcess:
    """A new daemon process on the same inbox and state folder, like a supervisor's restart."""
    second = DaemonProcess(first.workdir, free_port(), artifact=artifact, extra_settings=settings)
    second.start()
    return second


def name_owned_by(share: int, count: int, stem: str, suffix: str) -> str:
    """The first ``<stem>-<n><suffix>`` that ``Partition(share, count)`` owns."""
    return next(f"{stem}-{n}{suffix}" for n in range(1000) if Partition(share, count).owns(f"{stem}-{n}{suffix}"))


# -- the tests -----------------------------------------------------------------------------


def test_two_workers_share_the_inbox_and_every_file_is_counted_once(daemon) -> None:
    process = daemon(settings(WORKERS))
    assert process.process is not None
    main_pid = process.process.pid
    workers = worker_pids(main_pid)
    assert sorted(workers) == [1, 2], process.log()
    # The main process watches the inbox, once, for both (each worker would wake for every
    # event in it); it never started the source itself.
    inbox_inode = process.inbox.stat().st_ino
    wait_for(lambda: inbox_inode in watched_inodes(main_pid), timeout=20, message="the main process watching")
    assert not any(inbox_inode in watched_inodes(pid) for pid in workers.values())
    assert "source folder: run by the 2 worker processes" in process.log()
    samples_before = detector_samples(process)
    assert samples_before and set(samples_before.values()) == {0}

    good = drop_digits(process.inbox, 150)
    # One file that is no image in each worker's share: each rejection is logged by its worker.
    bad = [name_owned_by(0, WORKERS, "notes", ".txt"), name_owned_by(1, WORKERS, "junk", ".png")]
    for name in bad:
        drop_atomically(process.inbox, name, b"plain text, no image in it\n")
    assert {Partition(0, WORKERS).owns(name) for name in good} == {True, False}  # both shares have files

    wait_for(lambda: len(files_under(process.processed)) == len(good), timeout=60, message="150 processed files")
    wait_for(lambda: len(files_under(process.failed, "*.reason.txt")) == len(bad), timeout=20,
             message="the bad files in failed/")
    wait_for(lambda: files_under(process.inbox, "*") == [], timeout=20, message="an empty inbox")
    wait_for(lambda: process.metric("monitord_images_total", source="folder", outcome="ok") == len(good)
             and process.metric("monitord_images_total", source="folder", outcome="rejected") == len(bad),
             timeout=10, message="the workers' counts in /metrics")

    assert relative_files(process.processed) == sorted(good)  # each exactly once
    for name in good:
        path = process.processed / name
        assert path.read_bytes() == good[name]
        assert json.loads(path.with_name(path.name + ".json").read_text())["id"] == name
    assert relative_files(process.failed, "*") == sorted([*bad, *(f"{name}.reason.txt" for name in bad)])
    for name in bad:
        assert "not a recognised image format" in (process.failed / f"{name}.reason.txt").read_text()

    samples = detector_samples(process)
    assert samples == {name: len(good) for name in samples_before}  # each prediction once
    logged = [json.loads(line)["id"] for line in (process.state / "predictions.jsonl").read_text().splitlines()]
    assert sorted(logged) == sorted(good)

    # Each worker took its share: the rejection of the file in share I-1 is logged by worker I.
    log = process.log()
    assert f"[ingest-1] monitord.folder: rejected {bad[0]}" in log
    assert f"[ingest-2] monitord.folder: rejected {bad[1]}" in log
    assert not [line for line in log.splitlines() if "rejected" in line and "[ingest-" not in line
                and "monitord.folder" in line]
    assert process.terminate() == 0
    assert all(gone(pid) for pid in workers.values())
    assert ledger_after_stop(process.state) == (0, {"ok": len(good), "rejected": len(bad)})


def test_each_worker_takes_exactly_its_share_and_the_main_process_none(daemon) -> None:
    """Worker 1 is held (SIGSTOP): worker 2 finishes its share and nobody takes worker 1's,
    which waits in the inbox until worker 1 goes on."""
    process = daemon(settings(WORKERS))
    assert process.process is not None
    workers = worker_pids(process.process.pid)
    inbox_inode = process.inbox.stat().st_ino
    wait_for(lambda: inbox_inode in watched_inodes(process.process.pid), timeout=20,
             message="the main process watching the inbox")
    os.kill(workers[1], signal.SIGSTOP)
    try:
        good = drop_digits(process.inbox, 60)
        first = sorted(name for name in good if Partition(0, WORKERS).owns(name))
        second = sorted(name for name in good if Partition(1, WORKERS).owns(name))
        assert first and second
        wait_for(lambda: relative_files(process.processed) == second, timeout=30, message="worker 2's share")
        # Worker 1 cannot run: its files are all still waiting, none taken by another process.
        assert relative_files(process.inbox) == first
        assert ledger_rows(process.state) == []
    finally:
        os.kill(workers[1], signal.SIGCONT)
    wait_for(lambda: relative_files(process.processed) == sorted(good), timeout=30, message="worker 1's share")
    wait_for(lambda: process.metric("monitord_images_total", source="folder", outcome="ok") == len(good),
             timeout=10, message="the counts in /metrics")
    assert worker_pids(process.process.pid) == workers  # neither was restarted
    assert process.terminate() == 0


def test_a_worker_killed_mid_burst_is_restarted_and_every_file_is_processed_once(daemon, tmp_path: Path) -> None:
    env, gate, entered = gated_model(tmp_path)
    process = daemon(gated_settings(WORKERS, gate, entered), env=env)
    assert process.process is not None
    main_pid = process.process.pid
    workers = worker_pids(main_pid)
    assert sorted(workers) == [1, 2]
    good = drop_digits(process.inbox, 400)
    in_flight = kill_when_claims_are_open(workers[1], process.state, Partition(0, WORKERS).owns)
    assert in_flight > 0
    wait_for(lambda: "ingest worker 1 exited unexpectedly (status -9)" in process.log(), timeout=20,
             message="the restart notice")
    wait_for(lambda: set(worker_pids(main_pid)) == {1, 2} and worker_pids(main_pid)[1] != workers[1],
             timeout=60, message="a new worker 1")
    assert worker_pids(main_pid)[2] == workers[2]
    gate.unlink()

    wait_for(lambda: len(files_under(process.processed)) >= len(good), timeout=60, message="400 processed files")
    wait_for(lambda: files_under(process.inbox, "*") == [], timeout=20, message="an empty inbox")
    assert relative_files(process.processed) == sorted(good)  # none twice, none lost
    assert all((process.processed / f"{name}.json").exists() for name in good)
    assert files_under(process.failed, "*") == []
    assert "were being processed when the daemon last stopped" in process.log()  # the new worker 1 saw them
    assert process.terminate() == 0
    assert ledger_after_stop(process.state) == (0, {"ok": len(good)})


@pytest.mark.parametrize("workers_after", [3, 0])
def test_after_the_main_process_is_killed_a_start_with_other_workers_completes_every_file(
    daemon, digits_artifact: Path, tmp_path: Path, workers_after: int,
) -> None:
    env, gate, entered = gated_model(tmp_path)
    first = daemon(gated_settings(WORKERS, gate, entered), env=env)
    assert first.process is not None
    workers = worker_pids(first.process.pid)
    assert sorted(workers) == [1, 2]
    good = drop_digits(first.inbox, 400)
    # The workers' first batches wait at the gate, claimed, until the main process is killed.
    assert kill_when_claims_are_open(first.process.pid, first.state) > 0
    first.process.wait(10)
    gate.unlink()  # the batches then find no main process to record them
    wait_for(lambda: all(gone(pid) for pid in workers.values()), timeout=30, message="the workers to exit")
    # What the workers had in flight stays in the inbox: nothing was wrong with those files.
    reasons = files_under(first.failed, "*.reason.txt")
    assert files_under(first.failed, "*") == [], (
        f"{len(reasons)} good file(s) moved to failed/ when the main process died, e.g. {reasons[0].name}: "
        + reasons[0].read_text() if reasons else "files in failed/")
    done_before = relative_files(first.processed)
    assert len(done_before) < len(good)
    assert len(done_before) == len(set(done_before))
    # Outcomes recorded but not carried out are completed at the next start without the model.
    decided_left = [relative for relative, outcome in ledger_rows(first.state) if outcome is not None]

    second = restart(first, digits_artifact, settings(workers_after))
    try:
        assert second.process is not None
        assert sorted(worker_pids(second.process.pid)) == list(range(1, workers_after + 1))
        wait_for(lambda: len(files_under(second.processed)) >= len(good), timeout=60,
                 message="400 processed files")
        wait_for(lambda: files_under(second.inbox, "*") == [], timeout=20, message="an empty inbox")
        assert relative_files(second.processed) == sorted(good)  # none twice, none lost
        assert all((second.processed / f"{name}.json").exists() for name in good)
        assert files_under(second.failed, "*") == []
        # The files the first run had not finished went through the model once here.
        wait_for(lambda: second.metric("monitord_images_total", source="folder", outcome="ok")
                 == len(good) - len(done_before) - len(decided_left), timeout=10,
                 message="the second run's count")
        assert second.terminate() == 0
    finally:
        second.kill()
    assert ledger_after_stop(second.state) == (0, {"ok": len(good)})


def test_sigterm_with_files_in_flight_leaves_each_file_done_once_or_untouched(daemon, digits_artifact: Path,
                                                                          tmp_path: Path) -> None:
    env, gate, entered = gated_model(tmp_path)
    first = daemon(gated_settings(WORKERS, gate, entered), env=env)
    assert first.process is not None
    workers = worker_pids(first.process.pid)
    identities: dict[str, tuple[int, int, int]] = {}
    good = drop_digits(first.inbox, 400, identities=identities)
    wait_for(lambda: any(outcome is None for _, outcome in ledger_rows(first.state)), timeout=30,
             interval=0.02, message="files claimed and not yet decided")
    first.process.send_signal(signal.SIGTERM)
    wait_for(lambda: "received SIGTERM" in first.log(), message="the stop begun")
    gate.unlink()  # the batches at the gate finish; nothing after them starts
    assert first.process.wait(60) == 0
    assert all(gone(pid) for pid in workers.values())

    processed, waiting = relative_files(first.processed), relative_files(first.inbox)
    assert processed and len(processed) == len(set(processed))
    assert not set(processed) & set(waiting)  # never both
    assert sorted(processed + waiting) == sorted(good)  # never lost
    assert files_under(first.failed, "*") == []
    for name in processed:
        assert (first.processed / f"{name}.json").exists()
    for name in waiting:  # untouched: the same file, as it was dropped
        stat = (first.inbox / name).stat()
        assert (stat.st_ino, stat.st_size, stat.st_mtime_ns) == identities[name]
        assert (first.inbox / name).read_bytes() == good[name]
    assert ledger_after_stop(first.state) == (0, {"ok": len(processed)})  # claims finished or released

    second = restart(first, digits_artifact, settings(WORKERS))
    try:
        wait_for(lambda: len(files_under(second.processed)) >= len(good), timeout=60,
                 message="400 processed files")
        wait_for(lambda: files_under(second.inbox, "*") == [], timeout=20, message="an empty inbox")
        assert relative_files(second.processed) == sorted(good)
        wait_for(lambda: second.metric("monitord_images_total", source="folder", outcome="ok") == len(waiting),
                 timeout=10, message="the second run's count")
        assert "were being processed when the daemon last stopped" not in second.log()
        assert second.terminate() == 0
    finally:
        second.kill()
    assert ledger_after_stop(second.state) == (0, {"ok": len(good)})


@pytest.mark.parametrize("workers", [0, WORKERS], ids=["one-process", "two-workers"])
def test_a_folder_moved_into_the_inbox_whole_is_processed_by_every_share(daemon, workers: int) -> None:
    """A folder renamed into the inbox brings files no event announces. The process that
    owns the folder's own name is not the only one with files in it: every share must
    scan. The periodic rescan is an hour away, so only that scan can find them."""
    process = daemon(settings(workers) + "[folder]\nrescan_seconds = 3600\n")
    if workers:
        wait_for(lambda: len(worker_pids(process.process.pid)) == workers, timeout=30, message="the workers")
    outside = process.inbox.parent / "prepared"
    digits = held_out_pngs(40)
    names = {}
    for index, (label, data) in enumerate(digits):
        name = f"batch/{label}/m{index:03}.png"
        (outside / name).parent.mkdir(parents=True, exist_ok=True)
        (outside / name).write_bytes(data)
        names[name] = data
    if workers:
        shares = {next(share for share in range(workers) if Partition(share, workers).owns(name)) for name in names}
        assert shares == set(range(workers))  # files of every share arrive in the one folder
    os.rename(outside / "batch", process.inbox / "batch")
    wait_for(lambda: len(files_under(process.processed)) == len(names), timeout=30,
             message="every file of the moved-in folder processed")
    assert relative_files(process.processed) == sorted(names)
    assert files_under(process.inbox) == []
    assert process.terminate() == 0
