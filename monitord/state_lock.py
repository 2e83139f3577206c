"""One daemon per state folder: an exclusive lock on ``<state_dir>/lock``, held for the
daemon's whole life.

Two daemons on one ``state_dir`` would both take the same inbox files, feed every
detector twice and race on the ledger, the snapshots and the spool. The second one must
stop before it does anything, and say who holds the folder. ``flock`` is released by the
kernel when the holder exits, ``kill -9`` included, so a crash never leaves a stale lock;
the file itself stays (deleting a lock file others may be waiting on would let two
holders in) and holds the holder's pid for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from monitord.state_files import open_private, prepare_state_dir

LOCK_FILE = "lock"


class StateDirInUse(Exception):
    """Another process holds the state folder; the message names it and what to do."""


class StateDirLock:
    """The held lock; ``release`` (or process exit) frees it."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def lock_state_dir(state_dir: Path) -> StateDirLock:
    """Take ``<state_dir>/lock`` (creating the folder, private, if needed) or raise
    ``StateDirInUse`` at once, without waiting."""
    folder = Path(state_dir)
    prepare_state_dir(folder)
    path = folder / LOCK_FILE
    descriptor = open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        raise StateDirInUse(
            f"state_dir {folder.resolve()} is in use by another monitord ({holder}); stop that one first, "
            "or give this one its own state folder (state_dir, MONITORD_STATE_DIR)"
        ) from None
    except OSError as error:
        os.close(descriptor)
        raise StateDirInUse(
            f"cannot lock {path}: {error.strerror}; the state folder must be on a file system that "
            "supports flock (a local disk, not every network file system does)"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return StateDirLock(path, descriptor)


def _read_holder(descriptor: int) -> str:
    try:
        text = os.pread(descriptor, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"
