"""Built-in source ``folder``: images dropped into a watched inbox.

The inbox is the durable backlog: a file stays where it is until its outcome is known,
then moves to ``processed/`` (with ``<name>.json`` holding its prediction) or to
``failed/`` (with ``<name>.reason.txt``). Sub-folders are kept, so ``inbox/7/a.png`` ends
up as ``processed/7/a.png``; with ``folder.labels_from_subfolders`` the first sub-folder
names the true class (ImageFolder layout).

Files are found three ways: a scan at start, file-system events (``monitord.inbox_watch``:
arrivals only, by inotify on Linux), and a periodic rescan that reconciles anything an
event missed. A file is read only once no writer has it open (see
``monitord.file_readiness``). At most ``folder.max_backlog`` waiting files are held in
memory; the rest stay on disk until a scan finds room for them, so a backlog of any size
costs the same memory.

Every outcome goes through the ledger (``monitord.builtin.folder_ledger``) before the
file moves, so after a ``kill -9`` each file ends up in ``processed/`` or ``failed/``
exactly once.

Several inference processes on one host may share the inbox (``folder.share``), each
over the files its ``Partition`` owns (by their path under the inbox), all of them sharing
the one ledger: SQLite lets each process write in turn, and no two claim the same file.
Each share watches the inbox for itself and takes only its files. The recovery at start
completes the files the process owns now, so a different number of shares after a restart
takes over what the previous ones left.

Files travel in groups, and each group stays in one thread from its claim to its move:
the dispatcher (a task on the event loop) hands the waiting files to the source's own
thread (``monitord-folder``), which in one turn takes up to ``folder.max_in_flight`` of
them, a batch (``pipeline.max_batch_size``) at a time:

- checks that each is finished (an ``lstat``, which gives its identity and size, and the
  lease check of ``monitord.file_readiness``, whose open also reads a small file), claims
  the batch's ready ones in one ledger transaction (``begin_many``), sets aside the ones
  refused before reading (over ``folder.max_attempts``, a symlink out of the inbox, over
  ``folder.max_file_bytes``) and completes moves a crash interrupted;
- runs the rest through the pipeline as one group (``Pipeline.run``: one trip to the
  event loop; decoded, predicted and put in the stream there), and carries out their
  outcomes: recorded in one transaction (``decide_many``), then the files beside written
  and the files moved, then finished in one more (``finish_many``). Recording before
  moving is what makes a crash at any point harmless.

A file costs a share of each transaction and of each trip between threads, not one of
each: on two cores, files handed from thread to thread one by one (each system call lets
go of the interpreter lock, and the threads took it back from one another) cost more
than decoding them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from monitord.builtin.folder_files import free_name, move, sidecar, write_atomically
from monitord.builtin.folder_ledger import Decision, Entry, FileIdentity, Ledger
from monitord.file_readiness import WriterState, read_if_finished, writer_state
from monitord.hookspecs import hookimpl
from monitord.inbox_watch import Arrived, arrivals
from monitord.items import Outcome, Prediction, WorkItem
from monitord.pipeline import NotRecorded, PipelineClosed
from monitord.sources import Source, SourceContext

log = logging.getLogger("monitord.folder")

#: Names that are still being written by common tools, or are not meant for us.
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")

#: How long file-system events gather after a group is handed over (milliseconds): a lone
#: file is reported at once, a burst in groups; each group is a wake-up of the event loop.
WATCH_STEP_MS = 5

#: Files up to this size are read by the open that checks for a writer (one open per file,
#: not two); a batch of them held in memory at once stays small.
READ_DURING_CLAIM_BYTES = 1 << 20

#: Seconds between looks while files are held back (the monitor behind, the stream down).
HOLD_SECONDS = 0.5

_T = TypeVar("_T")


def is_candidate_name(relative: Path) -> bool:
    """Whether a path under the inbox names a file we should take (no dotfiles, no temp names)."""
    return _is_candidate(relative.as_posix())


def _is_candidate(relative: str) -> bool:
    """``is_candidate_name`` for a relative path as a string, ``/`` between its parts."""
    if relative.startswith(".") or "/." in relative:
        return False
    return not relative.rpartition("/")[2].lower().endswith(TEMPORARY_SUFFIXES)


def _under(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or inside it (both absolute and normalised)."""
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


class _Candidate:
    """A file seen in the inbox, not yet submitted."""

    __slots__ = ("signature", "stable_since")

    def __init__(self) -> None:
        self.signature: tuple[int, int] | None = None
        self.stable_since = 0.0


@dataclass
class _Ready:
    """A file found ready: what the claim needs to know about it."""

    path: str
    relative: str
    identity: FileIdentity
    #: Bytes of what it names (read through a symlink later), None when unknown.
    size: int | None
    is_link: bool
    #: Its content, read with the writer check (small files only); None: the decode reads it.
    content: bytes | None = None
    #: What it is when it is neither a file nor a link ("FIFO", "socket", ...): never
    #: opened (opening a FIFO waits for a writer), only failed with a reason.
    special: str | None = None


@dataclass
class _Turn:
    """What one trip of the dispatcher to the folder thread found."""

    #: Candidates that leave the backlog: gone, not files, or claimed.
    taken: list[str] = field(default_factory=list)
    #: Files refused before reading and moved to failed/ (counted as rejected).
    rejected: int = 0
    #: A folder arrived: its files came with it and no event announced them.
    folder_seen: bool = False


class FolderSource(Source):
    partitioned = True

    def __init__(self, context: SourceContext) -> None:
        super().__init__(context)
        self.settings = context.settings.folder
        self._partition = context.partition
        self.inbox = self.settings.inbox.resolve()
        self.processed = self.settings.processed.resolve()
        self.failed = self.settings.failed.resolve()
        # The hot paths work on strings: a Path per file and step costs more than the step.
        self._inbox = str(self.inbox)
        self._prefix = self._inbox if self._inbox.endswith(os.sep) else self._inbox + os.sep
        self._processed = str(self.processed)
        self._failed = str(self.failed)
        ledger = self.settings.ledger
        self.ledger_path = (ledger or Path(context.settings.state_dir) / "ledger.sqlite3").resolve()
        self.ledger: Ledger | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._candidates: dict[str, _Candidate] = {}
        #: Files were left out of the backlog (it was full): scan again once it empties.
        self._overflowed = False
        self._scan_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._drained: asyncio.Future[None] | None = None
        #: Files whose move out of the inbox failed, already logged (retried quietly).
        self._unfinished_reported: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The last turn ended because the stream could not take a batch: wait a little.
        self._held_back = False
        self._holding: str | None = None
        context.metrics.watch_queue("folder_backlog", lambda: len(self._candidates))

    def setup(self) -> None:
        for folder in (self.inbox, self.processed, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.ledger_path)
        # One thread for the ledger and the file work. More do not go faster: every system
        # call lets go of the GIL, and threads taking it back from one another (and from
        # the decode and model threads) cost more than the calls themselves.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="monitord-folder")

    def describe(self) -> str:
        share = f", share {self._partition.index + 1} of {self._partition.count}" if self._partition else ""
        return f"folder: {self.inbox} (processed -> {self.processed}, failed -> {self.failed}{share})"

    def _owns(self, relative: str) -> bool:
        """Whether this process takes the file at ``relative`` (all of them without workers)."""
        return self._partition is None or self._partition.owns(relative)

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` in the folder thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._in_thread(self._recover)
        await self._scan()
        self._tasks = [
            asyncio.create_task(self._rescan_periodically(), name="folder-rescan"),
            asyncio.create_task(self._dispatch(), name="folder-dispatch"),
        ]
        self._tasks.append(asyncio.create_task(self._watch(self._take_new, self._scan_soon), name="folder-watch"))

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._drained is None:
            self._drained = asyncio.ensure_future(self._drain())
        # Shielded: a shutdown deadline stops the waiting here, not a turn half made. The
        # folder thread then finishes its turn: the pipeline, closing, refuses the rest of
        # it, and those claims are released.
        await asyncio.shield(self._drained)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.ledger is not None:
            self.ledger.close()

    async def _drain(self) -> None:
        """Stop taking files in; the dispatcher stops after its turn, every outcome carried out."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._scan_task is not None:
            await asyncio.gather(self._scan_task, return_exceptions=True)

    # -- recovery --------------------------------------------------------------------------

    def _recover(self) -> None:
        """Complete the moves a crash interrupted; report files that were mid-batch."""
        assert self.ledger is not None
        entries = [entry for entry in self.ledger.unfinished() if self._owns(entry.relative)]
        decided = [entry for entry in entries if entry.decided]
        self._complete([(os.path.join(self._inbox, entry.relative), entry) for entry in decided])
        interrupted = len(entries) - len(decided)
        if decided:
            log.info("completed %d file move(s) interrupted by the last stop", len(decided))
        if interrupted:
            log.warning("%d file(s) were being processed when the daemon last stopped; processing them again "
                        "(each is counted once)", interrupted)
        totals = self.ledger.totals() if self._partition is None or self._partition.index == 0 else {}
        if totals:
            log.info("ledger %s: %s file(s) finished so far (%s)", self.ledger_path, sum(totals.values()),
                     ", ".join(f"{outcome} {count}" for outcome, count in totals.items()))

    def _complete(self, decided: list[tuple[str, Entry]]) -> None:
        """Finish the steps of decided outcomes: the file beside, the move, the count (folder thread)."""
        assert self.ledger is not None
        finished: list[tuple[str, str]] = []
        gone: list[str] = []
        for path, entry in decided:
            assert entry.outcome is not None and entry.target is not None
            try:
                source_is_it = FileIdentity.of(path) == entry.identity
                if not source_is_it and not os.path.lexists(entry.target):
                    log.warning("%s vanished from the inbox before its outcome (%s) was stored; nothing to move",
                                entry.relative, entry.outcome)
                    gone.append(entry.relative)
                    continue
                if entry.sidecar and entry.sidecar_text is not None:
                    write_atomically(entry.sidecar, entry.sidecar_text)
                if source_is_it:
                    move(path, entry.target)
            except Exception:
                log.exception("could not finish %s; it stays in the inbox and will be retried", entry.relative)
                continue
            finished.append((entry.relative, entry.outcome))
        if gone:
            self.ledger.forget_many(gone)
        if finished:
            self.ledger.finish_many(finished)

    # -- discovery -----------------------------------------------------------------------

    def _offer(self, path: str) -> None:
        if path in self._candidates:  # waiting, or in the folder thread's turn now
            return
        if not path.startswith(self._prefix) or self._is_ours(path):
            return
        relative = path[len(self._prefix):]
        if not _is_candidate(relative):
            return
        if not self._owns(relative):
            return
        # A folder (moved in whole, its files unannounced) is told apart in the folder
        # thread, which asks for a scan: no stat here, on the loop.
        if len(self._candidates) >= self.settings.max_backlog:
            self._overflowed = True  # it stays on disk; a scan finds it once there is room
            return
        self._candidates[path] = _Candidate()

    def _is_ours(self, path: str) -> bool:
        """Files under processed/ or failed/ when those live inside the inbox."""
        return _under(path, self._processed) or _under(path, self._failed)

    def _scan_soon(self) -> None:
        if self._scan_task is None or self._scan_task.done():
            self._scan_task = asyncio.create_task(self._scan(), name="folder-scan")
        else:
            self._overflowed = True  # a scan is running; look again when it is done

    async def _scan(self) -> None:
        """List the inbox off the event loop, taking files up to the backlog's room."""
        room = self.settings.max_backlog - len(self._candidates)
        known = set(self._candidates)
        found, complete = await asyncio.to_thread(self._list_inbox, room, known)
        for path in found:
            if len(self._candidates) >= self.settings.max_backlog:
                complete = False
                break
            if path not in self._candidates:
                self._candidates[path] = _Candidate()
        if not complete:
            self._overflowed = True
        self._wake.set()

    def _list_inbox(self, room: int, known: set[str]) -> tuple[list[str], bool]:
        """Up to ``room`` new candidate files, in name order; and whether that was all of them."""
        found: list[str] = []
        skip = len(self._prefix)
        for root, dirs, files in os.walk(self._inbox):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not self._is_ours(os.path.join(root, d)))
            for name in sorted(files):
                path = os.path.join(root, name)
                if path in known or not _is_candidate(path[skip:]) or not self._owns(path[skip:]):
                    continue
                if len(found) >= room:
                    return found, False
                found.append(path)
        return found, True

    async def _take_new(self, arrived: Arrived) -> None:
        # A folder among them is told apart by the claim's lstat, which asks for a scan.
        self._offer_all(arrived.paths)

    def _offer_all(self, paths: list[str]) -> None:
        for path in paths:
            self._offer(path)
        self._wake.set()

    async def _watch(self, take: Callable[[Arrived], Awaitable[None]], rescan: Callable[[], None]) -> None:
        """Hand each group of new paths in the inbox to ``take``; ``rescan`` when events
        were lost or the inbox was made again, and after the watcher failed and was
        started again, for what arrived meanwhile."""
        while not self._stopping.is_set():
            try:
                async with contextlib.aclosing(arrivals(self._inbox, self._stopping, WATCH_STEP_MS,
                                                        self._is_ours)) as groups:
                    async for arrived in groups:
                        if arrived is None:  # events were lost, or the inbox came back
                            rescan()
                        else:
                            await take(arrived)
            except Exception as error:
                cause = error.exceptions[0] if isinstance(error, BaseExceptionGroup) else error
                log.warning("the inbox watcher failed (%s); restarting it in 1 s, then rescanning the inbox", cause)
                try:
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
                except TimeoutError:
                    # Runs once the new watcher is set up: finds what arrived while none was.
                    rescan()

    async def _rescan_periodically(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.settings.rescan_seconds)
            except TimeoutError:
                self._scan_soon()

    # -- readiness, claims and dispatch ------------------------------------------------------

    async def _dispatch(self) -> None:
        poll = max(0.05, min(self.settings.settle_seconds / 2, 0.25))
        while not self._stopping.is_set():
            self._wake.clear()  # before looking: whatever arrives meanwhile wakes the next turn
            overloaded = self.context.pipeline.overloaded()
            if overloaded is not None or self._held_back:
                # The monitor is behind, or the stream cannot be reached: files wait on disk.
                self._held_back = False
                self._report_holding(overloaded or "the stream cannot be reached")
                await self._pause(HOLD_SECONDS)
                continue
            self._report_holding(None)
            try:
                waiting = await self._release_ready()
            except Exception:  # never let one bad turn stop the source; the files stay on disk
                log.exception("could not take files from the inbox; trying again")
                waiting = True
            if self._overflowed and len(self._candidates) <= self.settings.max_backlog // 2:
                self._overflowed = False
                self._scan_soon()
            if self._stopping.is_set():
                break
            try:
                await asyncio.wait_for(self._wake.wait(), poll if waiting else None)
            except TimeoutError:
                pass

    def _report_holding(self, why: str | None) -> None:
        """Log once when the folder starts leaving files in the inbox, and once when it stops."""
        if why is not None and self._holding is None:
            log.warning("leaving files in the inbox for now: %s", why)
        elif why is None and self._holding is not None:
            log.info("taking files from the inbox again")
        self._holding = why

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _release_ready(self) -> bool:
        """Take a turn in the folder thread; return whether candidates still wait."""
        if not self._candidates:
            return False
        # Busy files are passed over: look at up to 1,000 of them beyond the turn's size.
        group = list(itertools.islice(self._candidates.items(), self.settings.max_in_flight + 1000))
        turn = await self._in_thread(self._take_turn, group)
        for path in turn.taken:
            self._candidates.pop(path, None)
        if turn.taken and self._candidates:
            self._wake.set()  # more are ready, likely: the next turn now, not after a poll
        if turn.folder_seen:
            self._scan_soon()
        if turn.rejected:
            self.context.metrics.images.labels(source=self.name, outcome="rejected").inc(turn.rejected)
        return bool(self._candidates)

    def _take_turn(self, group: list[tuple[str, _Candidate]]) -> _Turn:
        """Take up to ``folder.max_in_flight`` ready files of ``group`` a batch at a time:
        claim, read and run each batch and carry out its outcomes before the next (folder
        thread). A file is claimed only once its batch is next, so at most a batch is
        claimed at once and a crash or stop leaves no more than that to start again."""
        turn = _Turn()
        candidates = iter(group)
        left = self.settings.max_in_flight
        size = min(left, self.context.settings.pipeline.max_batch_size)
        while left > 0:
            ready = self._find_ready(candidates, min(size, left), turn)
            if not ready:
                break
            left -= len(ready)
            submit = self._claim(ready, turn)
            if submit and not self._run(submit):
                break
        return turn

    def _find_ready(self, candidates: Iterator[tuple[str, _Candidate]], room: int, turn: _Turn) -> list[_Ready]:
        """The next (up to) ``room`` candidates that are finished files; empty when none is left.

        Files up to ``READ_DURING_CLAIM_BYTES`` are read here, by the same open that checks
        for a writer; larger ones are read when decoded.
        """
        ready: list[_Ready] = []
        now = time.monotonic()
        skip = len(self._prefix)
        settle = self.settings.settle_seconds
        for path, candidate in candidates:
            try:
                info = os.lstat(path)
            except OSError:
                turn.taken.append(path)  # vanished
                continue
            mode = info.st_mode
            if stat.S_ISLNK(mode):
                if os.path.isdir(path):
                    turn.taken.append(path)  # a link to a folder is not taken
                    continue
                # Processing checks where it points and refuses it with a reason.
                ready.append(_Ready(path, path[skip:], FileIdentity.of_stat(info), None, True))
            elif stat.S_ISDIR(mode):
                turn.taken.append(path)  # its files are candidates of their own
                turn.folder_seen = True
                continue
            elif not stat.S_ISREG(mode):
                ready.append(_Ready(path, path[skip:], FileIdentity.of_stat(info), None, False,
                                    special=_special_kind(mode)))
            else:
                # The identity and size are the lstat's: a file replaced between it and the
                # check is a new file with the same name, which a restart tells apart anyway.
                size = info.st_size
                if size <= READ_DURING_CLAIM_BYTES:
                    state, content = read_if_finished(path, size)
                else:
                    state, content = writer_state(path), None
                if state is WriterState.GONE:
                    turn.taken.append(path)
                    continue
                if state is WriterState.BUSY:
                    continue
                if state is WriterState.UNKNOWN:  # judge by stability
                    signature = (size, info.st_mtime_ns)
                    if signature != candidate.signature:
                        candidate.signature, candidate.stable_since = signature, now
                        if settle != 0:
                            continue
                    elif now - candidate.stable_since < settle:
                        continue
                ready.append(_Ready(path, path[skip:], FileIdentity.of_stat(info), size, False, content))
            if len(ready) >= room:
                break
        return ready

    def _claim(self, ready: list[_Ready], turn: _Turn) -> list[_Ready]:
        """Claim ``ready`` in the ledger and settle the files that need no model; return
        the ones to run (folder thread)."""
        assert self.ledger is not None
        turn.taken.extend(file.path for file in ready)
        try:
            entries = self.ledger.begin_many([(file.relative, file.identity) for file in ready])
        except Exception:
            log.exception("could not claim %d file(s) in the ledger; they stay in the inbox and the next "
                          "rescan takes them again", len(ready))
            return []
        submit: list[_Ready] = []
        decided: list[tuple[str, Entry]] = []
        refused: list[tuple[str, Decision]] = []
        for file, entry in zip(ready, entries):
            if entry.decided:
                # A crash came between deciding and moving: finish that, run nothing again.
                decided.append((file.path, entry))
                continue
            reason = self._refusal(file, entry)
            if reason is None:
                submit.append(file)
            else:
                target = free_name(os.path.join(self._failed, file.relative))
                refused.append((file.path, Decision(file.relative, "rejected", target,
                                                    sidecar(target, ".reason.txt"), reason + "\n")))
        if decided:
            try:
                self._complete(decided)
            except Exception:
                log.exception("could not complete %d interrupted move(s); the next rescan tries again", len(decided))
        if refused:
            turn.rejected += len(self._carry_out(refused))
        return submit

    def _refusal(self, file: _Ready, entry: Entry) -> str | None:
        """Why a claimed file is failed without being read, or None to submit it."""
        if entry.attempts > self.settings.max_attempts:
            return (f"the daemon stopped {entry.attempts - 1} times while this file was being processed "
                    f"(folder.max_attempts = {self.settings.max_attempts}); set aside so it cannot stop "
                    "it again; check the daemon's log from those runs")
        if file.special is not None:
            return (f"not a regular file but a {file.special}; only image files are read from the inbox "
                    "(write images as files, then rename them in)")
        size = file.size
        if file.is_link:
            # realpath, unlike Path.resolve, does not raise on a loop: reading it then fails with ELOOP.
            if not _under(os.path.realpath(file.path), self._inbox):
                return "symlink points outside the inbox; refused"
            size = _size(file.path)
        if size is not None and size > self.settings.max_file_bytes:
            return (f"file is {size} bytes, over the limit of {self.settings.max_file_bytes} "
                    "(folder.max_file_bytes); not read")
        return None

    def _run(self, batch: list[_Ready]) -> bool:
        """Run a claimed batch through the pipeline and carry out its outcomes (folder
        thread); False when the pipeline is closing.

        Files without an outcome through no fault of their own (the pipeline is closing,
        or the stream could not take their batch) are released: they stay in the inbox for
        a later turn or start, no attempt counted.
        """
        by_subfolder = self.settings.labels_from_subfolders
        items = []
        for file in batch:
            head, slash, _ = file.relative.partition("/")
            items.append(WorkItem(id=file.relative, source=self.name,
                                  payload=Path(file.path) if file.content is None else file.content,
                                  label=head if by_subfolder and slash else None))
        assert self._loop is not None
        try:
            outcomes = asyncio.run_coroutine_threadsafe(self.context.pipeline.run(items), self._loop).result()
        except (PipelineClosed, concurrent.futures.CancelledError, RuntimeError) as error:
            # NotRecorded included; RuntimeError: the loop closed under a stop.
            self._release([file.relative for file in batch])
            self._held_back = isinstance(error, NotRecorded)
            return False
        except Exception:
            log.exception("could not process %d file(s); they stay in the inbox and will be retried", len(batch))
            return True
        self._settle(list(zip(batch, outcomes)))
        return True

    def _release(self, relatives: list[str]) -> None:
        """Release claims that end without an outcome through no fault of the files."""
        assert self.ledger is not None
        try:
            self.ledger.release_many(relatives)
        except Exception:
            log.exception("could not release %d claim(s) in the ledger; each counts as one attempt",
                          len(relatives))

    # -- outcomes ----------------------------------------------------------------------------

    def _settle(self, done: list[tuple[_Ready, Outcome]]) -> None:
        """Record the outcomes, then carry them out (folder thread)."""
        write_json = self.settings.write_prediction_json
        planned: list[tuple[str, Decision]] = []
        for file, outcome in done:
            relative = file.relative
            try:
                if isinstance(outcome, Prediction):
                    target = free_name(os.path.join(self._processed, relative))
                    # The predictions log's line (encoded once, often on the way to it).
                    text = outcome.json_line() + "\n" if write_json else None
                    decision = Decision(relative, "ok", target, sidecar(target, ".json"), text)
                else:
                    target = free_name(os.path.join(self._failed, relative))
                    decision = Decision(relative, outcome.outcome, target, sidecar(target, ".reason.txt"),
                                        outcome.reason + "\n")
            except Exception:
                log.exception("could not finish %s; it stays in the inbox and will be retried", relative)
                continue
            planned.append((file.path, decision))
        self._carry_out(planned)

    def _carry_out(self, planned: list[tuple[str, Decision]]) -> list[Decision]:
        """Record the outcomes in one transaction, then write, move, and finish them in another.

        A crash anywhere in between is completed at the next start from what was recorded.
        Returns the decisions carried out.
        """
        assert self.ledger is not None
        if not planned:
            return []
        try:
            self.ledger.decide_many([decision for _, decision in planned])
        except Exception:
            log.exception("could not record the outcome of %d file(s); they stay in the inbox and will be "
                          "retried", len(planned))
            return []
        done: list[Decision] = []
        for path, decision in planned:
            try:
                if decision.sidecar_text is not None:
                    write_atomically(decision.sidecar, decision.sidecar_text)
                move(path, decision.target)
            except Exception:
                if decision.relative not in self._unfinished_reported:  # not again at every rescan
                    self._unfinished_reported.add(decision.relative)
                    log.exception("could not finish %s; it stays in the inbox and will be retried",
                                  decision.relative)
                continue
            if decision.outcome != "ok":
                log.warning("rejected %s: %s", decision.relative, (decision.sidecar_text or "").rstrip("\n"))
            done.append(decision)
        try:
            self.ledger.finish_many([(decision.relative, decision.outcome) for decision in done])
        except Exception:  # moved already: the next start finishes them from the ledger
            log.exception("could not finish %d file(s) in the ledger; the next start does", len(done))
        return done


def _special_kind(mode: int) -> str:
    """What an inbox entry that is neither a file, a folder nor a link is, for a person."""
    for test, kind in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return f"special file (mode {stat.filemode(mode)})"


def _size(path: str) -> int | None:
    """The size of what ``path`` names (through a symlink); None when it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError:
        return None


@hookimpl
def register_sources(register) -> None:
    register("folder", FolderSource)
