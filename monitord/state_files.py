"""Files in the state folder: written so a crash never leaves half of one, and set aside
(never deleted) when they cannot be read, so a person can look at what went wrong."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("monitord.state")


def write_json_durably(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON: a reader (or a restart after ``kill -9`` or a
    power cut) sees the old file or the new one, never a mixture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
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
