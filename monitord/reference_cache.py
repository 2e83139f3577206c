"""What detectors compute from their reference, kept on disk so a restart need not compute
it again.

Some detectors calibrate on their reference at start-up (NM-DDM simulates 100,000 windows
for its thresholds: about a second here), and do it again when a snapshot is restored. The
result depends only on the reference and the detector's parameters, so it is stored under a
digest of both in ``<state_dir>/reference-cache/``, and also looked for in
``<artifact>/reference-cache/``, where whatever made the artifact may have put it. Entries are numpy ``.npy`` files read with
``allow_pickle=False``; one that cannot be read is computed again (and rewritten), never
trusted.

Detector plugins reach the daemon's cache through ``active_cache()``: the daemon makes it
active in its start-up task, which builds and restores them (``activate``). Outside a
daemon (tests, ``monitord replay``, a notebook) the active cache keeps nothing and every
value is computed.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

log = logging.getLogger("monitord.reference_cache")

FOLDER_NAME = "reference-cache"


class ReferenceCache:
    """Arrays by name and digest, read from ``folders`` in order, written to ``writable``."""

    def __init__(self, folders: Sequence[Path] = (), writable: Path | None = None) -> None:
        self.folders = [Path(folder) for folder in folders]
        self.writable = Path(writable) if writable is not None else None

    @classmethod
    def for_daemon(cls, artifact: Path, state_dir: Path) -> "ReferenceCache":
        """Read from the artifact's folder (what was computed when it was made travels with
        it) and the state folder; written to the state folder only, since a daemon never
        changes the artifact it serves (it may be shared, read-only or versioned)."""
        in_state = Path(state_dir) / FOLDER_NAME
        return cls([Path(artifact) / FOLDER_NAME, in_state], in_state)

    def array(self, name: str, inputs: Sequence[bytes | str], compute: Callable[[], np.ndarray],
              shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The array stored for ``name`` and ``inputs``, or ``compute()``'s, stored now.

        ``inputs`` must hold everything the result depends on (parameters, the reference's
        bytes, a version of the computation), since the digest of them is the only key.
        With ``shape``, a stored entry must be float64 of that shape; another is computed
        again, not trusted.
        """
        file_name = f"{name}-{_digest(inputs)}.npy"
        for folder in self.folders:
            found = self._read(folder / file_name)
            if found is not None and shape is not None and (found.shape != shape or found.dtype != np.float64):
                log.warning("reference cache entry %s holds %s %s, not float64 %s; computing it again",
                            folder / file_name, found.dtype, found.shape, shape)
                found = None
            if found is not None:
                return found
        result = np.asarray(compute())
        if self.writable is not None:
            self._write(self.writable / file_name, result)
        return result

    @staticmethod
    def _read(path: Path) -> np.ndarray | None:
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("reference cache entry %s is unreadable (%s); computing it again", path, error)
            return None

    @staticmethod
    def _write(path: Path, values: np.ndarray) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(descriptor, "wb") as handle:
                np.save(handle, values, allow_pickle=False)
            os.replace(temporary, path)
        except OSError as error:
            log.warning("cannot keep %s in the reference cache (%s); it will be computed at the next start",
                        path.name, error)


_ACTIVE: contextvars.ContextVar[ReferenceCache] = contextvars.ContextVar(
    "monitord_reference_cache", default=ReferenceCache()
)


def active_cache() -> ReferenceCache:
    """The cache of the daemon building detectors now; one that keeps nothing otherwise."""
    return _ACTIVE.get()


def activate(cache: ReferenceCache) -> None:
    """Make ``cache`` the active one for the rest of the current context: an asyncio task's
    own (the daemon's start-up task), and the threads it hands a copy of it."""
    _ACTIVE.set(cache)


@contextlib.contextmanager
def using(cache: ReferenceCache) -> Iterator[ReferenceCache]:
    """Make ``cache`` the active one in this context (and threads started from it with a
    copy of the context, as ``asyncio.to_thread`` does)."""
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)


def _digest(inputs: Sequence[bytes | str]) -> str:
    digest = hashlib.sha256()
    for part in inputs:
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:24]
