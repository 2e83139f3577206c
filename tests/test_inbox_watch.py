"""The inbox watcher reports arrivals (files and folders, at any depth) and nothing else."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from monitord import inbox_watch
from monitord.inbox_watch import Arrived, arrivals

pytestmark = pytest.mark.skipif(inbox_watch.INotify is None, reason="inotify is Linux's")


class Watch:
    """Runs ``arrivals`` over a folder and collects what it reports."""

    def __init__(self, root: Path, skip=lambda path: False) -> None:
        self.root = root
        self.stopping = asyncio.Event()
        self.groups: list[Arrived | None] = []
        self._skip = skip
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Watch":
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.05)  # the generator sets its watches on its first step
        return self

    async def _run(self) -> None:
        async for group in arrivals(str(self.root), self.stopping, 5, self._skip):
            self.groups.append(group)

    async def __aexit__(self, *exc) -> None:
        self.stopping.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 5)

    @property
    def paths(self) -> list[str]:
        return [path for group in self.groups if group for path in group.paths]

    @property
    def folders(self) -> set[str]:
        return {path for group in self.groups if group and group.folders for path in group.folders}

    async def until(self, path: Path) -> list[str]:
        """Everything reported up to and including ``path`` (a sentinel dropped last)."""
        for _ in range(500):
            if str(path) in self.paths:
                return self.paths
            await asyncio.sleep(0.01)
        raise AssertionError(f"{path} was never reported; got {self.paths}")


def drop(folder: Path, name: str, data: bytes = b"x") -> Path:
    """A file written outside the watched tree and renamed in, as producers should."""
    staging = next(parent for parent in (folder, *folder.parents) if parent.name.endswith("inbox")).parent / "staging"
    staging.mkdir(exist_ok=True)
    (staging / name).write_bytes(data)
    os.rename(staging / name, folder / name)
    return folder / name


async def test_files_renamed_in_written_in_place_or_linked_are_reported(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    async with Watch(inbox) as watch:
        renamed = drop(inbox, "renamed.png")
        (inbox / "written.png").write_bytes(b"in place")
        os.link(renamed, inbox / "linked.png")
        os.symlink(renamed, inbox / "symlink.png")
        sentinel = drop(inbox, "sentinel.png")
        paths = await watch.until(sentinel)
    assert {str(inbox / name) for name in ("renamed.png", "written.png", "linked.png", "symlink.png")} <= set(paths)


async def test_opening_changing_and_moving_files_out_reports_nothing(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "processed").mkdir()
    present = inbox / "present.png"
    present.write_bytes(b"before the watch")
    async with Watch(inbox) as watch:
        present.read_bytes()
        os.chmod(present, 0o600)
        os.rename(present, tmp_path / "processed" / "present.png")
        sentinel = drop(inbox, "sentinel.png")
        paths = await watch.until(sentinel)
    assert paths == [str(sentinel)]  # the read, the chmod and the move out were not news


async def test_a_folder_moved_in_is_reported_and_watched_at_every_depth(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    arriving = tmp_path / "outside" / "batch"
    (arriving / "deeper").mkdir(parents=True)
    (arriving / "already-there.png").write_bytes(b"x")
    async with Watch(inbox) as watch:
        os.rename(arriving, inbox / "batch")
        await watch.until(inbox / "batch")
        later = drop(inbox / "batch" / "deeper", "later.png")
        await watch.until(later)
        (inbox / "made" / "here").mkdir(parents=True)  # made in place
        await watch.until(inbox / "made")  # reported once watched, with what is below it
        inside = drop(inbox / "made" / "here", "inside.png")
        await watch.until(inside)
        os.rename(inbox / "made", inbox / "renamed")  # renamed within the tree: new paths
        moved = drop(inbox / "renamed" / "here", "after-rename.png")
        await watch.until(moved)
    # Told apart from files, so that nobody need stat every path to find the folders.
    folders = {str(inbox / name) for name in ("batch", "made", "renamed")}
    assert folders <= watch.folders  # ("made/here" too, if it came after the watch on "made")
    assert not watch.folders & {str(later), str(inside), str(moved)}


async def test_folders_the_caller_skips_are_not_watched(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "processed").mkdir(parents=True)
    async with Watch(inbox, skip=lambda path: path.startswith(str(inbox / "processed"))) as watch:
        (inbox / "processed" / "result.png.json").write_text("{}")
        sentinel = drop(inbox, "sentinel.png")
        paths = await watch.until(sentinel)
    assert paths == [str(sentinel)]


@pytest.mark.skipif(sys.platform == "darwin", reason="names must be UTF-8 there")
async def test_a_name_that_is_not_utf8_is_reported_as_python_names_it(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    raw = os.fsdecode(b"\xff-raw.png")
    async with Watch(inbox) as watch:
        paths = await watch.until(drop(inbox, raw))
    assert str(inbox / raw) in paths


@pytest.mark.parametrize("away", ["deleted", "moved away"])
async def test_an_inbox_made_again_is_watched_again_and_scanned(tmp_path: Path, away: str) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "5").mkdir(parents=True)
    async with Watch(inbox) as watch:
        if away == "deleted":
            shutil.rmtree(inbox)
        else:
            os.rename(inbox, tmp_path / "old-inbox")
        await asyncio.sleep(0.1)
        (inbox / "5").mkdir(parents=True)
        for _ in range(300):  # the new inbox is looked for every second
            if None in watch.groups:
                break
            await asyncio.sleep(0.01)
        assert None in watch.groups  # asked to scan what came with it
        if away == "moved away":
            drop(tmp_path / "old-inbox" / "5", "in-the-old-one.png")
        sentinel = drop(inbox / "5", "sentinel.png")
        paths = await watch.until(sentinel)
    assert paths == [str(sentinel)]  # watched again, the old one no longer


def test_lost_events_ask_for_a_scan(tmp_path: Path) -> None:
    from inotify_simple import Event, flags

    (tmp_path / "sub").mkdir()
    watcher = inbox_watch._Watcher(str(tmp_path), lambda path: False)
    try:
        root, sub = (wd for wd, folder in sorted(watcher._folders.items(), key=lambda item: len(item[1])))
        assert watcher.arrived([Event(root, flags.MOVED_TO, 0, "a.png")]) == Arrived([str(tmp_path / "a.png")], set())
        assert watcher.arrived([Event(sub, flags.MOVED_TO, 0, "a.png"), Event(-1, flags.Q_OVERFLOW, 0, "")]) is None
        assert watcher.arrived([Event(sub, flags.IGNORED, 0, "")]) == Arrived([], set())
        # Its folder went away.
        assert watcher.arrived([Event(sub, flags.MOVED_TO, 0, "b.png")]) == Arrived([], set())
        assert not watcher.root_gone
        assert watcher.arrived([Event(root, flags.IGNORED, 0, "")]) == Arrived([], set())
        assert watcher.root_gone
    finally:
        watcher.close()


async def test_the_watch_ends_when_asked(tmp_path: Path) -> None:
    async with Watch(tmp_path) as watch:
        pass
    assert watch.groups == []
