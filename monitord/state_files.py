"""Files in the state folder: private to the daemon's user, written so a crash never
leaves half of one, and set aside (never deleted) when they cannot be read, so a person
can look at what went wrong.

Private means files 0600 and folders 0700 whatever the umask: the state holds what the
daemon saw (file names, predictions, pending notifications), which is nobody else's
business. ``prepare_state_dir`` makes ``state_dir`` itself 0700 at start.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("monitord.state")

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def prepare_state_dir(folder: Path) -> None:
    """Create ``state_dir`` 0700, or make an existing one 0700, saying so in the log; one
    this user cannot change (another owner) is reported with what to do."""
    folder = Path(folder)
    if not folder.exists():
        make_private_folder(folder)
        return
    mode = stat.S_IMODE(folder.stat().st_mode)
    if mode == PRIVATE_FOLDER:
        return
    try:
        os.chmod(folder, PRIVATE_FOLDER)
    except OSError as error:
        log.warning("state_dir %s has mode %04o and cannot be made private (%s); its files are 0600, but "
                    "run chmod 700 on it as its owner to hide them entirely", folder, mode, error)
        return
    log.info("state_dir %s had mode %04o; made it %04o, private to this user", folder, mode, PRIVATE_FOLDER)


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` 0700 (missing parents as the umask says), or make it 0700."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, PRIVATE_FOLDER)
    except FileExistsError:
        pass
    make_private(folder, PRIVATE_FOLDER)


def make_private(path: Path, mode: int = PRIVATE_FILE) -> None:
    """chmod ``path`` to ``mode`` if it exists and has another; a failure is logged, not raised."""
    try:
        if stat.S_IMODE(os.stat(path).st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.warning("cannot make %s private (mode %04o): %s", path, mode, error)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` that creates ``path`` 0600 whatever the umask (and makes an existing file
    0600): a file descriptor to wrap with ``os.fdopen``."""
    descriptor = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(descriptor).st_mode) != PRIVATE_FILE:
            os.fchmod(descriptor, PRIVATE_FILE)
    except OSError as error:
        log.warning("cannot make %s private: %s", path, error)
    return descriptor


def create_private_file(path: Path) -> None:
    """Make sure ``path`` exists and is 0600, before a library that would create it with a
    mode of its own (SQLite: 0644; logging: the umask's) opens it."""
    os.close(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))


def open_private_text(path: Path) -> IO[str]:
    """A new (or truncated) text file at ``path``, 0600."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8")


def write_json_durably(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, 0600: a reader (or a restart after ``kill -9``
    or a power cut) sees the old file or the new one, never a mixture."""
    make_private_folder(path.parent)
    temporary = path.with_name(f".{path.name}.tmp")
    with open_private_text(temporary) as handle:
        json.dump(data, handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    sync_directory(path.parent)


def set_aside(path: Path, why: str) -> Path | None:
    """Rename an unusable state file to ``<name>.<why>-<UTC time>`` and say so in the log.

    Returns the new path, or None when the file could not be moved either.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}-{counter}")
    try:
        os.replace(path, target)
    except OSError as error:
        log.error("cannot set %s aside: %s", path, error)
        return None
    log.warning("set %s aside as %s; it stays there for inspection and is not used", path.name, target)
    return target


def sync_directory(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power cut (best effort: some file
    systems refuse)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
