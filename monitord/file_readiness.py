"""Is a file finished? Never read one that a writer still has open.

Linux answers exactly: a read lease (``F_SETLEASE``) is refused with EAGAIN while any
process has the file open for writing. So a file renamed into place is ready at once, and
one being written in place waits for its writer to close it, however slowly it writes.
Where a lease cannot be taken (another owner without CAP_LEASE, network file systems,
other platforms) we fall back to waiting until size and mtime stop changing.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass

try:
    import fcntl

    _F_SETLEASE = getattr(fcntl, "F_SETLEASE", None)
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]
    _F_SETLEASE = None


class WriterState(enum.Enum):
    BUSY = "busy"  # a writer holds the file open
    FREE = "free"  # nobody writes it
    UNKNOWN = "unknown"  # cannot tell here; fall back to size stability
    GONE = "gone"  # not there any more, or not a regular file


def writer_state(path: str | os.PathLike[str]) -> WriterState:
    opened = _open(path)
    if isinstance(opened, WriterState):
        return opened
    try:
        # No F_UNLCK: closing our only descriptor removes the lease, one system call fewer.
        return _lease(opened)
    finally:
        os.close(opened)


def read_if_finished(path: str, size: int) -> tuple[WriterState, bytes | None]:
    """``writer_state`` and, when nobody writes the file, its content: one open, not two.

    ``size`` is what the caller's ``lstat`` found (a file that grew since is read to its
    end). The lease is given back before reading: while it is held, a writer opening the
    file makes the kernel signal this process (SIGIO, whose default action ends it), so it
    is held for one system call, never for a read. The folder source reads small files
    this way: two opens cost more than decoding them, and each open wakes every inotify
    watcher of the folder.
    """
    opened = _open(path)
    if isinstance(opened, WriterState):
        return opened, None
    try:
        state = _lease(opened)
        if state is not WriterState.FREE:
            return state, None
        fcntl.fcntl(opened, _F_SETLEASE, fcntl.F_UNLCK)
        # A lease is granted on regular files only, so a read shorter than asked is the end.
        try:
            data = os.read(opened, size + 1)
            if len(data) > size:
                chunks = [data]
                while chunk := os.read(opened, 1 << 20):
                    chunks.append(chunk)
                data = b"".join(chunks)
        except OSError:  # the decode reads it again and reports why it cannot
            return state, None
        return state, data
    finally:
        os.close(opened)


def _open(path: str | os.PathLike[str]) -> int | WriterState:
    """A descriptor to probe, or the state when the path cannot be opened as a file."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return WriterState.GONE
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symlink: leases do not apply, judge by stability
            return WriterState.UNKNOWN
        return WriterState.GONE if error.errno in (errno.EISDIR, errno.ENOTDIR) else WriterState.UNKNOWN


def _lease(fd: int) -> WriterState:
    """Whether a writer holds the file open, from whether a read lease is granted."""
    if _F_SETLEASE is None:
        return WriterState.UNKNOWN
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError as error:
        return WriterState.BUSY if error.errno == errno.EAGAIN else WriterState.UNKNOWN
    return WriterState.FREE


@dataclass(frozen=True)
class FileSignature:
    """What changes while a file is written: its size and modification time."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> "FileSignature | None":
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return cls(stat.st_size, stat.st_mtime_ns)
