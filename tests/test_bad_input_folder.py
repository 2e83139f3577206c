"""Bad input in the watched folder: a clear reason for each bad file, nothing lost, the daemon goes on.

The real daemon runs as a subprocess (``monitord run``) on the corpus of ``bad_inputs``
plus held-out digits; the helpers of ``monitord.builtin.folder_files`` that name the
files written beside results are checked on their own first, on a real file system.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bad_inputs import (
    LONG_ACCENTED_BAD,
    LONG_ASCII,
    LONG_CJK,
    LONG_EMOJI,
    NOT_UTF8_DANGLING,
    TARGETS,
    Case,
    by_expectation,
    corpus,
    digit_like,
    encode,
    not_utf8_cases,
    raw_name,
)
from daemon_process import DaemonProcess, free_port, wait_for
from digit_files import drop_atomically, held_out_pngs
from monitord.builtin.folder_files import NAME_MAX, free_name, name_bytes, shorten, sidecar, write_atomically

SIDECAR_SUFFIXES = (".json", ".reason.txt")


# -- naming helpers, on a real file system ----------------------------------------------


@pytest.mark.parametrize("name", [LONG_ASCII, LONG_EMOJI, LONG_CJK, LONG_ACCENTED_BAD],
                         ids=["ascii-255", "emoji-252", "cjk-253", "accented-254"])
@pytest.mark.parametrize("suffix", SIDECAR_SUFFIXES)
def test_sidecar_of_a_name_near_name_max_fits_and_stays_recognisable(tmp_path: Path, name: str, suffix: str) -> None:
    target = tmp_path / name
    target.write_bytes(b"image")
    path = sidecar(target, suffix)
    write_atomically(path, "reason or prediction\n")  # ENAMETOOLONG before the fix
    assert path.read_text(encoding="utf-8") == "reason or prediction\n"
    assert name_bytes(path.name) <= NAME_MAX and path.name.endswith(suffix)
    assert path.name.encode("utf-8").decode("utf-8") == path.name  # never cut inside a character
    assert name.startswith(path.name.split("~")[0]) and len(path.name.split("~")[0]) >= len(name) // 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, path.name])  # no temporary left


def test_short_names_keep_the_plain_sidecar_name(tmp_path: Path) -> None:
    assert sidecar(tmp_path / "a.png", ".json") == tmp_path / "a.png.json"
    assert sidecar(tmp_path / "b" / "c.jpg", ".reason.txt") == tmp_path / "b" / "c.jpg.reason.txt"


def test_long_names_that_share_their_start_get_distinct_sidecars(tmp_path: Path) -> None:
    first, second = "x" * 250 + "1.png", "x" * 250 + "2.png"
    assert sidecar(tmp_path / first, ".json") != sidecar(tmp_path / second, ".json")
    assert sidecar(tmp_path / first, ".json") == sidecar(tmp_path / first, ".json")  # deterministic


@pytest.mark.parametrize("name", [LONG_ASCII, LONG_EMOJI, LONG_ACCENTED_BAD, "a." + "b" * 252],
                         ids=["ascii-255", "emoji-252", "accented-254", "long-suffix"])
def test_free_name_of_a_taken_long_name_fits(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"first")
    taken = [tmp_path / name]
    for _ in range(3):
        path = free_name(tmp_path / name)
        assert path not in taken and name_bytes(path.name) <= NAME_MAX
        path.write_bytes(b"another")  # ENAMETOOLONG before the fix
        taken.append(path)
        if len(Path(name).suffix) < 10:
            assert path.suffix == Path(name).suffix
    assert len(list(tmp_path.iterdir())) == 4


def test_shorten_cuts_between_characters() -> None:
    assert shorten("数数数", 8) == "数数"
    assert shorten("ab", 10) == "ab"
    assert shorten(os.fsdecode(b"\xff\xfeab"), 3) == os.fsdecode(b"\xff\xfea")  # raw bytes count one each


def test_text_with_a_name_that_is_not_utf8_is_written_readable(tmp_path: Path) -> None:
    path = tmp_path / "reason.txt"
    write_atomically(path, f"cannot read {NOT_UTF8_DANGLING}: No such file or directory\n")
    assert path.read_bytes().decode("utf-8") == "cannot read dangling-\\udce9.png: No such file or directory\n"


# -- the corpus through the real daemon --------------------------------------------------


def entries(folder: Path) -> set[str]:
    """Every non-directory entry under ``folder`` (files and symlinks), as relative paths.

    Hidden names are skipped: they are the corpus's own symlink targets, never taken.
    """
    found: set[str] = set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in dirs + files:
            path = Path(root) / name
            if not name.startswith(".") and (path.is_symlink() or not path.is_dir()):
                found.add(path.relative_to(folder).as_posix())
    return found


def results(folder: Path) -> set[str]:
    return {name for name in entries(folder) if not name.endswith(SIDECAR_SUFFIXES)}


def assert_outcomes(process: DaemonProcess, cases: list[Case]) -> None:
    """Each case where it belongs, with the file beside it saying why (or what it is)."""
    for case in cases:
        if case.expect == "rejected":
            assert os.path.lexists(process.failed / case.relative), case.name
            reason = sidecar(process.failed / case.relative, ".reason.txt").read_bytes().decode("utf-8")
            assert case.reason.lower() in reason.lower(), (case.name, reason)
        elif case.expect == "ok":
            assert os.path.lexists(process.processed / case.relative), case.name
            record = json.loads(sidecar(process.processed / case.relative, ".json").read_bytes().decode("utf-8"))
            assert record["id"] == case.name and "class" in record, record


def predictions_logged(process: DaemonProcess) -> list[dict]:
    path = process.state / "predictions.jsonl"
    lines = path.read_bytes().decode("utf-8").splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


#: Only the folder source; no periodic rescan within a test's time, so every file after the
#: start must be found by the file-system watcher (the rescan would hide a dead watcher).
SETTINGS = 'sources = ["folder"]\n[folder]\nrescan_seconds = 3600\n'


@pytest.fixture(scope="module")
def folder_daemon(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    process = DaemonProcess(tmp_path_factory.mktemp("bad-folder"), free_port(), artifact=digits_artifact,
                            extra_settings=SETTINGS)
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


def test_corpus_every_bad_file_fails_with_its_reason_and_every_good_one_is_classified(
    folder_daemon: DaemonProcess,
) -> None:
    process = folder_daemon
    cases = corpus()
    bad, good, ignored = (by_expectation(cases, kind) for kind in ("rejected", "ok", "ignored"))
    digits = [(f"{label}/good-{index}.png", data) for index, (label, data) in enumerate(held_out_pngs(10))]
    for case in cases:
        case.create(process.inbox, process.workdir / "outside", process.workdir / "staging")
    for name, data in digits:
        drop_atomically(process.inbox, name, data)

    expected_failed = {case.relative.as_posix() for case in bad}
    expected_processed = {case.relative.as_posix() for case in good} | {name for name, _ in digits}
    wait_for(lambda: len(results(process.processed)) + len(results(process.failed))
             >= len(expected_failed) + len(expected_processed), timeout=120, message="every case finished")
    assert results(process.failed) == expected_failed
    assert results(process.processed) == expected_processed  # nothing lost, nothing twice

    assert_outcomes(process, bad + good)
    for name in expected_processed:
        record = json.loads(sidecar(process.processed / name, ".json").read_text(encoding="utf-8"))
        assert record["id"] == name and record["class"] in {str(d) for d in range(10)}, record
    assert entries(process.failed) == expected_failed | {
        sidecar(Path(name), ".reason.txt").as_posix() for name in expected_failed}
    assert entries(process.processed) == expected_processed | {
        sidecar(Path(name), ".json").as_posix() for name in expected_processed}

    # Only what is not a file stays: directories named like images and links to folders.
    assert entries(process.inbox) == {case.name for case in ignored if (process.inbox / case.name).is_symlink()}
    for case in ignored:
        assert os.path.lexists(process.inbox / case.name), case.name
    assert (process.inbox / "folder.png").is_dir() and (process.inbox / "album.jpg").is_dir()
    assert (process.inbox / TARGETS / "real.png").is_file()  # a link's target is not taken with it
    assert os.readlink(process.processed / "inside-link.png").endswith("real.png")  # the link itself moved

    # A refused symlink is counted just after its move: wait for the count, never sleep.
    wait_for(lambda: process.metric("monitord_images_total", source="folder", outcome="rejected") >= len(bad),
             timeout=10, message="the rejections counted")
    assert process.metric("monitord_images_total", source="folder", outcome="rejected") == len(bad)
    assert process.metric("monitord_images_total", source="folder", outcome="ok") == len(expected_processed)
    assert process.metric("monitord_images_total", source="folder", outcome="error") == 0

    wait_for(lambda: len(predictions_logged(process)) >= len(expected_processed), timeout=10,
             message="the predictions log written")
    assert sorted(record["id"] for record in predictions_logged(process)) == sorted(expected_processed)

    log = process.log()
    assert "Traceback" not in log and "Logging error" not in log and "could not finish" not in log, log[-3000:]


def test_long_names_dropped_again_get_a_free_name_and_the_daemon_goes_on(folder_daemon: DaemonProcess) -> None:
    """Runs after the corpus: the same long names are taken in processed/ and failed/."""
    process = folder_daemon
    ok_before = process.metric("monitord_images_total", source="folder", outcome="ok")
    rejected_before = process.metric("monitord_images_total", source="folder", outcome="rejected")
    assert (process.processed / LONG_ASCII).exists() and (process.failed / LONG_ACCENTED_BAD).exists()
    png = encode(digit_like(), "PNG")
    again = [Case(LONG_ASCII, "ok", data=png), Case(LONG_EMOJI, "ok", data=png),
             Case(LONG_ACCENTED_BAD, "rejected", data=b"still not an image")]
    for case in again:
        case.create(process.inbox, process.workdir / "outside", process.workdir / "staging")
    (label, data), = held_out_pngs(1)
    drop_atomically(process.inbox, f"{label}/after-the-corpus.png", data)

    wait_for(lambda: (process.processed / str(label) / "after-the-corpus.png").exists(), message="the next image")
    wait_for(lambda: not {case.name for case in again} & entries(process.inbox), message="the long names taken")
    for case in again:
        folder = process.failed if case.expect == "rejected" else process.processed
        copies = [p for p in folder.iterdir() if p.name.startswith(case.name[:40]) and not p.name.endswith(SIDECAR_SUFFIXES)]
        assert len(copies) == 2, copies  # the first one is still there, the second beside it
        for copy in copies:
            assert name_bytes(copy.name) <= NAME_MAX
            assert sidecar(copy, ".reason.txt" if case.expect == "rejected" else ".json").exists()
    assert process.metric("monitord_images_total", source="folder", outcome="ok") == ok_before + 3
    assert process.metric("monitord_images_total", source="folder", outcome="rejected") == rejected_before + 1
    assert "could not finish" not in process.log()


def test_symlink_loop_is_refused_with_a_reason(folder_daemon: DaemonProcess) -> None:
    process = folder_daemon
    loop = process.inbox / "loop.png"
    os.symlink("loop.png", process.inbox / ".loop-staging")
    os.replace(process.inbox / ".loop-staging", loop)
    wait_for(lambda: os.path.lexists(process.failed / "loop.png") or "could not finish loop.png" in process.log(),
             message="the loop handled one way or the other")
    assert os.path.lexists(process.failed / "loop.png") and not os.path.lexists(loop)
    reason = (process.failed / "loop.png.reason.txt").read_text().lower()
    assert "symlink" in reason or "symbolic link" in reason, reason


def test_a_fifo_and_a_socket_in_the_inbox_go_to_failed_with_a_reason(folder_daemon: DaemonProcess) -> None:
    """Neither is ever opened (a FIFO's open waits for a writer, which would stall the
    folder); both leave the inbox with a reason, as any file that cannot be used."""
    import socket

    process = folder_daemon
    rejected_before = process.metric("monitord_images_total", source="folder", outcome="rejected")
    os.mkfifo(process.inbox / "pipe.png")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(process.inbox / "sock.png"))
    try:
        wait_for(lambda: os.path.lexists(process.failed / "pipe.png") and os.path.lexists(process.failed / "sock.png"),
                 timeout=120, message="the FIFO and the socket moved to failed/")
    finally:
        listener.close()
    assert not os.path.lexists(process.inbox / "pipe.png") and not os.path.lexists(process.inbox / "sock.png")
    assert "FIFO" in (process.failed / "pipe.png.reason.txt").read_text()
    assert "socket" in (process.failed / "sock.png.reason.txt").read_text()
    wait_for(lambda: process.metric("monitord_images_total", source="folder", outcome="rejected")
             == rejected_before + 2, message="both counted as rejected")
    # The folder still works after them.
    label, data = held_out_pngs(1)[0]
    drop_atomically(process.inbox, f"{label}/after-fifo.png", data)
    wait_for(lambda: (process.processed / str(label) / "after-fifo.png").exists(), message="a digit after them")


@pytest.fixture(scope="module")
def raw_names_daemon(tmp_path_factory: pytest.TempPathFactory, digits_artifact: Path):
    """A daemon that finds the names that are not UTF-8 in its inbox at start (by its scan)."""
    workdir = tmp_path_factory.mktemp("raw-names")
    for case in not_utf8_cases():
        case.create(workdir / "inbox", workdir / "outside", workdir / "staging")
    process = DaemonProcess(workdir, free_port(), artifact=digits_artifact, extra_settings=SETTINGS)
    process.start()
    yield process
    assert process.terminate() == 0
    process.kill()


def test_names_that_are_not_utf8_are_handled_like_any_other(raw_names_daemon: DaemonProcess) -> None:
    process = raw_names_daemon
    cases = not_utf8_cases()
    names = {case.name for case in cases}
    wait_for(lambda: not names & entries(process.inbox) or "could not finish" in process.log(),
             message="the names handled one way or the other")
    assert not names & entries(process.inbox), process.log()[-2000:]
    assert_outcomes(process, cases)
    wanted = {case.name for case in cases if case.expect == "ok"}
    wait_for(lambda: wanted <= {record["id"] for record in predictions_logged(process)}, timeout=10,
             message="the predictions log written")
    assert process.metric("monitord_images_total", source="folder", outcome="ok") == len(wanted)
    assert process.metric("monitord_images_total", source="folder", outcome="rejected") == len(cases) - len(wanted)
    log = process.log()
    assert "rejected \\udcff\\udcfe-broken.png" in log  # logged, escaped, not lost
    assert "Logging error" not in log and "could not finish" not in log


def test_a_name_that_is_not_utf8_does_not_stop_the_watcher(raw_names_daemon: DaemonProcess) -> None:
    process = raw_names_daemon
    staging = process.workdir / "staging"
    Case(raw_name(b"\xfe-dropped-while-running.png"), "ok", data=encode(digit_like(), "PNG")).create(
        process.inbox, process.workdir / "outside", staging)
    (label, data), = held_out_pngs(1)
    drop_atomically(process.inbox, f"{label}/after-a-raw-name.png", data)
    # folder.rescan_seconds is an hour: only the watcher can find this file in time.
    wait_for(lambda: (process.processed / str(label) / "after-a-raw-name.png").exists(), timeout=10,
             message="the next file found by the watcher")
