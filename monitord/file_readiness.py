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
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return WriterState.GONE
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symlink: leases do not apply, judge by stability
            return WriterState.UNKNOWN
        return WriterState.GONE if error.errno in (errno.EISDIR, errno.ENOTDIR) else WriterState.UNKNOWN
    try:
        if _F_SETLEASE is None:
            return WriterState.UNKNOWN
        try:
            fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
        except OSError as error:
            if error.errno == errno.EAGAIN:
                return WriterState.BUSY
            return WriterState.UNKNOWN
        # No F_UNLCK: closing our only descriptor removes the lease, one system call fewer
        # (the folder source asks this of every file).
        return WriterState.FREE
    finally:
        os.close(fd)


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
