"""A file is ready when no writer holds it open; temporary names are never candidates."""

from __future__ import annotations

import os
from pathlib import Path

from monitord.builtin.folder_source import is_candidate_name
from monitord.file_readiness import FileSignature, WriterState, writer_state


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
