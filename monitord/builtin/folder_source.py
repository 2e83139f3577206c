"""Built-in source ``folder``: images dropped into a watched inbox.

The inbox is the durable backlog: a file stays where it is until its outcome is known,
then moves to ``processed/`` (with ``<name>.json`` holding its prediction) or to
``failed/`` (with ``<name>.reason.txt``). Sub-folders are kept, so ``inbox/7/a.png`` ends
up as ``processed/7/a.png``; with ``folder.labels_from_subfolders`` the first sub-folder
names the true class (ImageFolder layout).

Files are found three ways: a scan at start, file-system events (watchfiles), and a
periodic rescan that reconciles anything an event missed (an inotify queue overflow
included). A file is read only once no writer has it open (see
``monitord.file_readiness``). At most ``folder.max_backlog`` waiting files are held in
memory; the rest stay on disk until a scan finds room for them, so a backlog of any size
costs the same memory.

Every outcome goes through the ledger (``monitord.builtin.folder_ledger``) before the
file moves, so after a ``kill -9`` each file ends up in ``processed/`` or ``failed/``
exactly once.
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
from monitord.builtin.folder_ledger import Entry, FileIdentity, Ledger
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
        self.ledger_path = Path(context.settings.state_dir).resolve() / "ledger.sqlite3"
        self.ledger: Ledger | None = None
        self._candidates: OrderedDict[Path, _Candidate] = OrderedDict()
        self._in_flight: dict[Path, asyncio.Task[None]] = {}
        #: Files were left out of the backlog (it was full): scan again once it empties.
        self._overflowed = False
        self._scan_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        context.metrics.watch_queue("folder_backlog", lambda: len(self._candidates))

    def setup(self) -> None:
        for folder in (self.inbox, self.processed, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.ledger_path)

    def describe(self) -> str:
        return f"folder: watching {self.inbox} (processed -> {self.processed}, failed -> {self.failed})"

    async def start(self) -> None:
        await asyncio.to_thread(self._recover)
        await self._scan()
        self._tasks = [
            asyncio.create_task(self._watch(), name="folder-watch"),
            asyncio.create_task(self._rescan_periodically(), name="folder-rescan"),
            asyncio.create_task(self._dispatch(), name="folder-dispatch"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._scan_task is not None:
            await asyncio.gather(self._scan_task, return_exceptions=True)
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        if self.ledger is not None:
            self.ledger.close()

    # -- recovery --------------------------------------------------------------------------

    def _recover(self) -> None:
        """Complete the moves a crash interrupted; report files that were mid-batch."""
        assert self.ledger is not None
        entries = self.ledger.unfinished()
        decided = [entry for entry in entries if entry.decided]
        for entry in decided:
            self._complete(self.inbox / entry.relative, entry)
        interrupted = len(entries) - len(decided)
        if decided:
            log.info("completed %d file move(s) interrupted by the last stop", len(decided))
        if interrupted:
            log.warning("%d file(s) were being processed when the daemon last stopped; processing them again "
                        "(each is counted once)", interrupted)
        totals = self.ledger.totals()
        if totals:
            log.info("ledger %s: %s file(s) finished so far (%s)", self.ledger_path, sum(totals.values()),
                     ", ".join(f"{outcome} {count}" for outcome, count in totals.items()))

    def _complete(self, path: Path, entry: Entry) -> None:
        """Finish the steps of a decided outcome: the file beside, the move, the count."""
        assert self.ledger is not None and entry.outcome is not None and entry.target is not None
        target = Path(entry.target)
        source_is_it = FileIdentity.of(path) == entry.identity
        if not source_is_it and not os.path.lexists(target):
            log.warning("%s vanished from the inbox before its outcome (%s) was stored; nothing to move",
                        entry.relative, entry.outcome)
            self.ledger.forget(entry.relative)
            return
        if entry.sidecar and entry.sidecar_text is not None:
            write_atomically(Path(entry.sidecar), entry.sidecar_text)
        if source_is_it:
            move(path, target)
        self.ledger.finish(entry.relative, entry.outcome)

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
            self._scan_soon()  # a folder moved in whole brings files no event announced
            return
        if len(self._candidates) >= self.settings.max_backlog:
            self._overflowed = True  # it stays on disk; a scan finds it once there is room
            return
        self._candidates[path] = _Candidate()

    def _is_ours(self, path: Path) -> bool:
        """Files under processed/ or failed/ when those live inside the inbox."""
        return path.is_relative_to(self.processed) or path.is_relative_to(self.failed)

    def _scan_soon(self) -> None:
        if self._scan_task is None or self._scan_task.done():
            self._scan_task = asyncio.create_task(self._scan(), name="folder-scan")
        else:
            self._overflowed = True  # a scan is running; look again when it is done

    async def _scan(self) -> None:
        """List the inbox off the event loop, taking files up to the backlog's room."""
        room = self.settings.max_backlog - len(self._candidates)
        known = set(self._candidates) | set(self._in_flight)
        found, complete = await asyncio.to_thread(self._list_inbox, room, known)
        for path in found:
            if len(self._candidates) >= self.settings.max_backlog:
                complete = False
                break
            if path not in self._in_flight and path not in self._candidates:
                self._candidates[path] = _Candidate()
        if not complete:
            self._overflowed = True
        self._wake.set()

    def _list_inbox(self, room: int, known: set[Path]) -> tuple[list[Path], bool]:
        """Up to ``room`` new candidate files, in name order; and whether that was all of them."""
        found: list[Path] = []
        for root, dirs, files in os.walk(self.inbox):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not self._is_ours(root_path / d))
            for name in sorted(files):
                path = root_path / name
                if path in known or not is_candidate_name(path.relative_to(self.inbox)):
                    continue
                if len(found) >= room:
                    return found, False
                found.append(path)
        return found, True

    async def _watch(self) -> None:
        while not self._stopping.is_set():
            try:
                async for changes in watchfiles.awatch(
                    self.inbox, stop_event=self._stopping, recursive=True, watch_filter=None, debounce=200, step=20
                ):
                    for change, raw_path in changes:
                        if change != watchfiles.Change.deleted:
                            self._offer(Path(raw_path))
                    self._wake.set()
            except Exception as error:  # e.g. watchfiles cannot decode a file name that is not UTF-8
                cause = error.exceptions[0] if isinstance(error, BaseExceptionGroup) else error
                log.warning("the inbox watcher failed (%s); restarting it in 1 s, then rescanning the inbox", cause)
                try:
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                except TimeoutError:
                    # Runs once the new watcher is set up: finds what arrived while none was.
                    self._scan_soon()

    async def _rescan_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.rescan_seconds)
            except TimeoutError:
                self._scan_soon()

    # -- readiness and dispatch ------------------------------------------------------------

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        poll = max(0.05, min(self.settings.settle_seconds / 2, 0.25))
        while not self._stopping.is_set():
            waiting = self._release_ready(loop.time())
            if self._overflowed and len(self._candidates) <= self.settings.max_backlog // 2:
                self._overflowed = False
                self._scan_soon()
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
        assert self.ledger is not None
        relative = path.relative_to(self.inbox)
        key = relative.as_posix()
        claimed = False
        try:
            identity = FileIdentity.of(path)
            if identity is None:
                return  # gone since it was found
            entry = self.ledger.begin(key, identity)
            claimed = not entry.decided
            if entry.decided:
                # A crash came between deciding and moving: finish that, run nothing again.
                await asyncio.to_thread(self._complete, path, entry)
                return
            if entry.attempts > self.settings.max_attempts:
                reason = (f"the daemon stopped {entry.attempts - 1} times while this file was being processed "
                          f"(folder.max_attempts = {self.settings.max_attempts}); set aside so it cannot stop "
                          "it again; check the daemon's log from those runs")
                await self._reject(path, relative, reason)
                return
            # realpath, unlike Path.resolve, does not raise on a loop: reading it then fails with ELOOP.
            if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(self.inbox):
                await self._reject(path, relative, "symlink points outside the inbox; refused")
                return
            size = _size(path)
            if size is not None and size > self.settings.max_file_bytes:
                await self._reject(path, relative, f"file is {size} bytes, over the limit of "
                                   f"{self.settings.max_file_bytes} (folder.max_file_bytes); not read")
                return
            label = relative.parts[0] if self.settings.labels_from_subfolders and len(relative.parts) > 1 else None
            item = WorkItem(id=key, source=self.name, payload=path, label=label)
            try:
                outcome = await self.context.pipeline.submit(item)
            except PipelineClosed:
                self.ledger.release(key)
                return  # left in the inbox for the next start
            await asyncio.to_thread(self._finish, path, relative, outcome)
        except asyncio.CancelledError:
            if claimed:
                self.ledger.release(key)  # shutdown, not the file's doing
            raise
        except Exception:
            log.exception("could not finish %s; it stays in the inbox and will be retried", relative)
        finally:
            del self._in_flight[path]
            self._wake.set()

    async def _reject(self, path: Path, relative: Path, reason: str) -> None:
        """Refuse a file the pipeline never saw; counted like the pipeline's rejections."""
        await asyncio.to_thread(self._fail, path, relative, reason)
        self.context.metrics.images.labels(source=self.name, outcome="rejected").inc()

    def _finish(self, path: Path, relative: Path, outcome: Outcome) -> None:
        if isinstance(outcome, Prediction):
            target = free_name(self.processed / relative)
            text = json.dumps(outcome.to_json(), indent=1) if self.settings.write_prediction_json else None
            self._settle(path, relative, "ok", target, sidecar(target, ".json"), text)
        else:
            self._fail(path, relative, outcome.reason, outcome.outcome)

    def _fail(self, path: Path, relative: Path, reason: str, outcome: str = "rejected") -> None:
        target = free_name(self.failed / relative)
        self._settle(path, relative, outcome, target, sidecar(target, ".reason.txt"), reason + "\n")
        log.warning("rejected %s: %s", relative, reason)

    def _settle(self, path: Path, relative: Path, outcome: str, target: Path, beside: Path,
                text: str | None) -> None:
        """Record the outcome, then carry it out: a crash in between is completed at start."""
        assert self.ledger is not None
        key = relative.as_posix()
        self.ledger.decide(key, outcome, target, beside, text)
        if text is not None:
            write_atomically(beside, text)
        move(path, target)
        self.ledger.finish(key, outcome)


def _size(path: Path) -> int | None:
    """The size of what ``path`` names (through a symlink); None when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError:
        return None


@hookimpl
def register_sources(register) -> None:
    register("folder", FolderSource)
