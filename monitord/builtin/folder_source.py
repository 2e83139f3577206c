"""Built-in source ``folder``: images dropped into a watched inbox.

The inbox is the durable backlog: a file stays where it is until its outcome is known,
then moves to ``processed/`` (with ``<name>.json`` holding its prediction) or to
``failed/`` (with ``<name>.reason.txt``). Sub-folders are kept, so ``inbox/7/a.png`` ends
up as ``processed/7/a.png``; with ``folder.labels_from_subfolders`` the first sub-folder
names the true class (ImageFolder layout).

Files are found three ways: a scan at start, file-system events (watchfiles), and a
periodic rescan that reconciles anything an event missed. A file is read only once no
writer has it open (see ``monitord.file_readiness``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections import OrderedDict
from pathlib import Path

import watchfiles

from monitord.builtin.folder_files import free_name, move, sidecar, write_atomically
from monitord.file_readiness import FileSignature, WriterState, writer_state
from monitord.hookspecs import hookimpl
from monitord.items import Outcome, Prediction, WorkItem
from monitord.pipeline import PipelineClosed
from monitord.sources import Source, SourceContext

log = logging.getLogger("monitord.folder")

#: Names that are still being written by common tools, or are not meant for us.
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")


def is_candidate_name(relative: Path) -> bool:
    """Whether a path under the inbox names a file we should take (no dotfiles, no temp names)."""
    if any(part.startswith(".") for part in relative.parts):
        return False
    name = relative.name.lower()
    return not name.endswith(TEMPORARY_SUFFIXES)


class _Candidate:
    """A file seen in the inbox, not yet submitted."""

    __slots__ = ("signature", "stable_since")

    def __init__(self) -> None:
        self.signature: FileSignature | None = None
        self.stable_since = 0.0


class FolderSource(Source):
    def __init__(self, context: SourceContext) -> None:
        super().__init__(context)
        self.settings = context.settings.folder
        self.inbox = self.settings.inbox.resolve()
        self.processed = self.settings.processed.resolve()
        self.failed = self.settings.failed.resolve()
        self._candidates: OrderedDict[Path, _Candidate] = OrderedDict()
        self._in_flight: dict[Path, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        context.metrics.watch_queue("folder_backlog", lambda: len(self._candidates))

    def setup(self) -> None:
        for folder in (self.inbox, self.processed, self.failed):
            folder.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"folder: watching {self.inbox} (processed -> {self.processed}, failed -> {self.failed})"

    async def start(self) -> None:
        self._scan()
        self._tasks = [
            asyncio.create_task(self._watch(), name="folder-watch"),
            asyncio.create_task(self._rescan_periodically(), name="folder-rescan"),
            asyncio.create_task(self._dispatch(), name="folder-dispatch"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    # -- discovery -----------------------------------------------------------------------

    def _offer(self, path: Path) -> None:
        if path in self._in_flight or path in self._candidates:
            return
        if self._is_ours(path):
            return
        try:
            relative = path.relative_to(self.inbox)
        except ValueError:
            return
        if not is_candidate_name(relative):
            return
        if path.is_dir() and not path.is_symlink():
            self._scan(path)  # a folder moved in whole brings files no event announced
            return
        self._candidates[path] = _Candidate()

    def _is_ours(self, path: Path) -> bool:
        """Files under processed/ or failed/ when those live inside the inbox."""
        return path.is_relative_to(self.processed) or path.is_relative_to(self.failed)

    def _scan(self, top: Path | None = None) -> None:
        for root, dirs, files in os.walk(top or self.inbox):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not self._is_ours(root_path / d))
            for name in sorted(files):
                self._offer(root_path / name)
        self._wake.set()

    async def _watch(self) -> None:
        async for changes in watchfiles.awatch(
            self.inbox, stop_event=self._stopping, recursive=True, watch_filter=None, debounce=200, step=20
        ):
            for change, raw_path in changes:
                if change != watchfiles.Change.deleted:
                    self._offer(Path(raw_path))
            self._wake.set()

    async def _rescan_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.rescan_seconds)
            except TimeoutError:
                self._scan()

    # -- readiness and dispatch ------------------------------------------------------------

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        poll = max(0.05, min(self.settings.settle_seconds / 2, 0.25))
        while not self._stopping.is_set():
            waiting = self._release_ready(loop.time())
            self._wake.clear()
            timeout = poll if waiting else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _release_ready(self, now: float) -> bool:
        """Submit ready candidates while there is room; return whether some still wait."""
        room = self.settings.max_in_flight - len(self._in_flight)
        examined = 0
        for path in list(self._candidates):
            if room <= 0 or examined >= room + 1000:
                break
            examined += 1
            if self._is_ready(path, self._candidates[path], now):
                del self._candidates[path]
                self._in_flight[path] = asyncio.create_task(self._process(path))
                room -= 1
        return bool(self._candidates)

    def _is_ready(self, path: Path, candidate: _Candidate, now: float) -> bool:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = 0
        if stat.S_ISLNK(mode):
            if path.is_dir():
                del self._candidates[path]
                return False
            return True  # processing checks where it points and refuses it with a reason
        if not stat.S_ISREG(mode):
            del self._candidates[path]  # vanished, a directory, a socket: nothing to read
            return False
        state = writer_state(path)
        if state is WriterState.GONE:
            del self._candidates[path]
            return False
        if state is WriterState.BUSY:
            return False
        if state is WriterState.FREE:
            return True
        signature = FileSignature.of(path)
        if signature != candidate.signature:
            candidate.signature, candidate.stable_since = signature, now
            return self.settings.settle_seconds == 0
        return now - candidate.stable_since >= self.settings.settle_seconds

    # -- one file --------------------------------------------------------------------------

    async def _process(self, path: Path) -> None:
        relative = path.relative_to(self.inbox)
        try:
            if path.is_symlink() and not path.resolve().is_relative_to(self.inbox):
                await asyncio.to_thread(self._fail, path, relative, "symlink points outside the inbox; refused")
                self.context.metrics.images.labels(source=self.name, outcome="rejected").inc()
                return
            label = relative.parts[0] if self.settings.labels_from_subfolders and len(relative.parts) > 1 else None
            item = WorkItem(id=relative.as_posix(), source=self.name, payload=path, label=label)
            try:
                outcome = await self.context.pipeline.submit(item)
            except PipelineClosed:
                return  # left in the inbox for the next start
            await asyncio.to_thread(self._finish, path, relative, outcome)
        except Exception:
            log.exception("could not finish %s; it stays in the inbox and will be retried", relative)
        finally:
            del self._in_flight[path]
            self._wake.set()

    def _finish(self, path: Path, relative: Path, outcome: Outcome) -> None:
        if isinstance(outcome, Prediction):
            target = free_name(self.processed / relative)
            if self.settings.write_prediction_json:
                write_atomically(sidecar(target, ".json"), json.dumps(outcome.to_json(), indent=1))
            move(path, target)
        else:
            self._fail(path, relative, outcome.reason)

    def _fail(self, path: Path, relative: Path, reason: str) -> None:
        target = free_name(self.failed / relative)
        write_atomically(sidecar(target, ".reason.txt"), reason + "\n")
        move(path, target)
        log.warning("rejected %s: %s", relative, reason)


@hookimpl
def register_sources(register) -> None:
    register("folder", FolderSource)
