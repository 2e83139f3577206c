"""A file is ready when no writer holds it open; temporary names are never candidates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from monitord.builtin.folder_source import is_candidate_name
from monitord.file_readiness import FileSignature, WriterState, read_if_finished, writer_state


def test_open_writer_makes_a_file_busy_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    with path.open("wb") as writer:
        writer.write(b"partial")
        writer.flush()
        assert writer_state(path) is WriterState.BUSY
    assert writer_state(path) is WriterState.FREE


def test_a_reader_does_not_make_a_file_busy(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"done")
    with path.open("rb"):
        assert writer_state(path) is WriterState.FREE


def test_missing_files_and_directories_are_gone(tmp_path: Path) -> None:
    assert writer_state(tmp_path / "nothing.png") is WriterState.GONE
    (tmp_path / "folder.png").mkdir()
    assert writer_state(tmp_path / "folder.png") is not WriterState.FREE


def test_symlinks_fall_back_to_stability(tmp_path: Path) -> None:
    (tmp_path / "target.png").write_bytes(b"x")
    os.symlink(tmp_path / "target.png", tmp_path / "link.png")
    assert writer_state(tmp_path / "link.png") is WriterState.UNKNOWN


def test_read_if_finished_reads_only_what_no_writer_holds(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    with path.open("wb") as writer:
        writer.write(b"partial")
        writer.flush()
        assert read_if_finished(str(path), 7) == (WriterState.BUSY, None)
    assert read_if_finished(str(path), 7) == (WriterState.FREE, b"partial")


READ_WHILE_A_WRITER_OPENS = """
import os, subprocess, sys
import monitord.file_readiness as readiness
path = sys.argv[1]
real_read = os.read
def read_while_a_writer_opens(fd, count):
    # Another process opens the file for writing in the middle of our read.
    os.read = real_read  # subprocess reads pipes with it
    subprocess.run([sys.executable, "-c", "open(%r, 'ab').close()" % path], timeout=20, check=True)
    return real_read(fd, count)
os.read = read_while_a_writer_opens
print(readiness.read_if_finished(path, 4))
"""


def test_no_lease_is_held_while_reading(tmp_path: Path) -> None:
    """A lease held during the read would make a writer's open wait for the lease-break
    time, and the kernel would signal the reader with SIGIO, whose default ends it."""
    path = tmp_path / "a.png"
    path.write_bytes(b"done")
    child = subprocess.run([sys.executable, "-c", READ_WHILE_A_WRITER_OPENS, str(path)],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, (child.returncode, child.stderr)
    assert child.stdout.strip() == "(<WriterState.FREE: 'free'>, b'done')"


def test_read_if_finished_reads_a_file_that_grew_since_its_size_was_taken(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    content = os.urandom(3 << 20)
    path.write_bytes(content)
    assert read_if_finished(str(path), 10) == (WriterState.FREE, content)
    path.write_bytes(b"")
    assert read_if_finished(str(path), 0) == (WriterState.FREE, b"")


def test_read_if_finished_leaves_links_folders_and_missing_files_unread(tmp_path: Path) -> None:
    (tmp_path / "target.png").write_bytes(b"x")
    os.symlink(tmp_path / "target.png", tmp_path / "link.png")
    assert read_if_finished(str(tmp_path / "link.png"), 1) == (WriterState.UNKNOWN, None)
    assert read_if_finished(str(tmp_path / "nothing.png"), 1) == (WriterState.GONE, None)
    (tmp_path / "folder.png").mkdir()
    state, content = read_if_finished(str(tmp_path / "folder.png"), 1)
    assert state is not WriterState.FREE and content is None


def test_signature_changes_when_a_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"12")
    before = FileSignature.of(path)
    with path.open("ab") as writer:
        writer.write(b"345")
    assert FileSignature.of(path) != before
    assert FileSignature.of(tmp_path / "missing") is None


def test_candidate_names() -> None:
    assert is_candidate_name(Path("7/img.png"))
    assert is_candidate_name(Path("überkatze – 猫.jpeg"))
    for name in (".hidden.png", "img.png.tmp", "img.png.part", "img.png~", ".staging/img.png", "x.crdownload"):
        assert not is_candidate_name(Path(name)), name
