"""What arrives in a folder tree: the paths of new files and folders, as they come.

On Linux the tree is watched with inotify for arrivals only: a file renamed in
(``IN_MOVED_TO``), closed after writing (``IN_CLOSE_WRITE``), or created (``IN_CREATE``:
links, and folders). A general watcher (watchfiles, through the Rust ``notify`` crate)
also asks for every open, every departure and every change of the files in the tree;
the folder source opens each file once and moves it out, so that was three events per
file where one is news, and every event is a wake-up of the watching thread, paid for
by the process that caused it as well (a burst with two workers: 7 % more files/s with
arrivals only). Elsewhere watchfiles does the watching.

A folder that arrives is watched before it is reported, so a scan the caller makes of
it finds every file that came before the watch. If the watched folder itself is deleted
or moved away, it is watched again once it is back (looked for every second), and the
caller is asked to scan it. Known gap, for the events it saves: a sub-folder moved *out*
of the tree is not noticed; its watch stays until the folder is deleted, and a path it
reports then no longer exists (the caller finds it gone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import AsyncIterator, Callable, NamedTuple, Sequence

log = logging.getLogger("monitord.folder")

try:
    if not sys.platform.startswith("linux"):
        raise ImportError("inotify is Linux's")
    from inotify_simple import INotify, flags

    _ARRIVALS = flags.MOVED_TO | flags.CLOSE_WRITE | flags.CREATE
    _FOLDER = flags.ONLYDIR | flags.DONT_FOLLOW
except (ImportError, OSError, AttributeError):  # pragma: no cover - not on Linux
    INotify = None  # type: ignore[assignment,misc]

class Arrived(NamedTuple):
    """Paths that arrived in one group."""

    paths: list[str]
    #: Those of them that are folders (their files came unannounced); None: not known here.
    folders: set[str] | None


#: What arrived, or None: events were lost (or the root was made again), scan.
Arrivals = Arrived | None


async def arrivals(root: str, stopping: asyncio.Event, step_ms: int,
                   skip: Callable[[str], bool]) -> AsyncIterator[Arrivals]:
    """Yield what arrives under ``root`` until ``stopping`` is set; folders for which
    ``skip(path)`` is true (the daemon's own, when they lie inside) are not watched.

    After a group is handed over, events gather for ``step_ms`` before the next read:
    a lone file is reported at once, a burst in groups instead of one by one.
    """
    if INotify is None:  # pragma: no cover - not on Linux
        async for group in _arrivals_from_watchfiles(root, stopping, step_ms):
            yield group
        return
    watcher = _Watcher(root, skip)
    loop = asyncio.get_running_loop()
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        while not stopping.is_set():
            # Watched only while waiting: the descriptor stays readable while events
            # gather, and a reader left on it would spin the loop meanwhile.
            readable = loop.create_future()
            loop.add_reader(watcher.fileno(), _resolve, readable)
            try:
                await asyncio.wait((readable, stopped), return_when=asyncio.FIRST_COMPLETED)
            finally:
                loop.remove_reader(watcher.fileno())
                readable.cancel()
            if stopping.is_set():
                break
            group = watcher.read()
            if group is None:
                log.warning("file-system events were lost (too many at once); rescanning %s", root)
            if group is None or group.paths:
                yield group
            if watcher.root_gone:
                watcher.close()
                log.warning("%s was deleted or moved away; watching it again once it is back", root)
                back = await _when_back(root, skip, stopping)
                if back is None:
                    break
                watcher = back
                log.info("%s is back; watching it", root)
                yield None  # what came with it
                continue
            await asyncio.sleep(step_ms / 1000)
    finally:
        stopped.cancel()
        watcher.close()


async def _when_back(root: str, skip: Callable[[str], bool], stopping: asyncio.Event) -> _Watcher | None:
    """A watcher over ``root`` once it exists again (looked for every second); None if
    asked to stop first."""
    while not stopping.is_set():
        try:
            return _Watcher(root, skip)
        except OSError:
            try:
                await asyncio.wait_for(stopping.wait(), 1.0)
            except TimeoutError:
                pass
    return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Watcher:
    """One inotify instance over a folder tree, and the folder each watch stands for."""

    def __init__(self, root: str, skip: Callable[[str], bool]) -> None:
        self._skip = skip
        self._inotify = INotify(nonblocking=True)
        self._folders: dict[int, str] = {}
        #: The root was deleted or moved away: its watch no longer stands for its path.
        self.root_gone = False
        try:
            self._root = self._inotify.add_watch(root, _ARRIVALS | _FOLDER | flags.MOVE_SELF)
            self._folders[self._root] = root
            self._watch_below(root)
        except BaseException:
            self._inotify.close()
            raise

    def fileno(self) -> int:
        return self._inotify.fileno()

    def close(self) -> None:
        self._inotify.close()

    def read(self) -> Arrivals:
        return self.arrived(self._inotify.read(timeout=0))

    def arrived(self, events: Sequence) -> Arrivals:
        """The paths ``events`` announce; new folders are watched before they are reported."""
        paths: list[str] = []
        folders: set[str] = set()
        lost = False
        for event in events:
            mask = event.mask
            if mask & flags.Q_OVERFLOW:
                lost = True
                continue
            if event.wd == self._root and mask & (flags.IGNORED | flags.MOVE_SELF):
                self.root_gone = True
                continue
            if mask & flags.IGNORED:  # the folder is gone, and its watch with it
                self._folders.pop(event.wd, None)
                continue
            folder = self._folders.get(event.wd)
            if folder is None or not event.name:
                continue
            path = os.path.join(folder, event.name)
            if mask & flags.ISDIR:
                folders.add(path)
                if not self._skip(path):
                    self._watch_tree(path)
            paths.append(path)
        return None if lost else Arrived(paths, folders)

    def _watch_tree(self, folder: str) -> None:
        try:
            # A folder renamed within the tree keeps its watch: the new name replaces the old.
            self._folders[self._inotify.add_watch(folder, _ARRIVALS | _FOLDER)] = folder
        except OSError as error:
            # Gone again, or no watch left (fs.inotify.max_user_watches): the periodic
            # rescan still finds what arrives in it, later.
            log.warning("cannot watch %s for new files (%s); the periodic rescan finds them",
                        folder, error.strerror or error)
            return
        self._watch_below(folder)

    def _watch_below(self, folder: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not self._skip(entry.path):
                self._watch_tree(entry.path)


async def _arrivals_from_watchfiles(root: str, stopping: asyncio.Event, step_ms: int) -> AsyncIterator[Arrivals]:
    import watchfiles

    deleted = watchfiles.Change.deleted
    async for changes in watchfiles.awatch(root, stop_event=stopping, recursive=True, watch_filter=None,
                                           debounce=4 * step_ms, step=step_ms):
        yield Arrived([path for change, path in changes if change != deleted], None)
