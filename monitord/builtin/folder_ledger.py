"""The folder source's ledger: which inbox files are being processed, and what became of them.

The inbox is the durable backlog, but moving a file out of it is several steps (write the
prediction or reason file beside the destination, move the file, across file systems a
copy and a delete), and a ``kill -9`` can land between any two. The ledger, an SQLite
database in WAL mode (``<state_dir>/ledger.sqlite3``), makes the outcome durable before
the first step, so a restart completes the steps instead of running the model again:

1. ``begin``: the file is claimed (its identity: device, inode, size, mtime). A claim
   that never reached an outcome means the daemon stopped mid-batch; the file is still in
   the inbox and is processed again, counted once. A file that was claimed
   ``folder.max_attempts`` times without an outcome is failed instead: it is likely the
   reason the daemon keeps dying.
2. ``decide``: the outcome, the destination and the text beside it are recorded.
3. ``finish``: after the move, the row goes and the outcome's total is counted.

Commits use ``synchronous=NORMAL``: they survive the process being killed (the usual
crash), and a power cut may forget the last few, which means a file is processed again,
never lost. Every method is safe to call from any thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from monitord.state_files import set_aside

log = logging.getLogger("monitord.folder.ledger")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    relative TEXT PRIMARY KEY,
    device INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    outcome TEXT,
    target TEXT,
    sidecar TEXT,
    sidecar_text TEXT
);
CREATE TABLE IF NOT EXISTS totals (outcome TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class FileIdentity:
    """Tells a file from another that later took the same name."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "FileIdentity | None":
        try:
            stat = os.lstat(path)
        except OSError:
            return None
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Entry:
    """A file the ledger knows: claimed ``attempts`` times, and its outcome once decided."""

    relative: str
    identity: FileIdentity
    attempts: int
    outcome: str | None = None
    target: str | None = None
    sidecar: str | None = None
    sidecar_text: str | None = None

    @property
    def decided(self) -> bool:
        return self.outcome is not None


class LedgerError(Exception):
    """The ledger cannot be opened; the message says where and what to do."""


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._open()
        except sqlite3.DatabaseError as error:
            log.error("folder ledger %s is unreadable (%s); starting a new one", self.path, error)
            for suffix in ("-wal", "-shm"):
                sibling = self.path.with_name(self.path.name + suffix)
                if sibling.exists():
                    set_aside(sibling, "corrupt")
            if set_aside(self.path, "corrupt") is None:
                raise LedgerError(f"cannot move the unreadable ledger {self.path} aside; remove it by hand") from None
            return self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {row[0]}, this monitord writes {SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the three steps -------------------------------------------------------------------

    def begin(self, relative: str, identity: FileIdentity) -> Entry:
        """Claim a file; returns its entry, with the outcome when one was already decided."""
        with self._lock, self._db:
            key = _db(relative)
            row = self._db.execute("SELECT * FROM files WHERE relative = ?", (key,)).fetchone()
            if row is not None:
                known = _entry(row)
                if known.identity == identity:
                    if known.decided:
                        return known
                    self._db.execute("UPDATE files SET attempts = attempts + 1 WHERE relative = ?", (key,))
                    return Entry(relative, identity, known.attempts + 1)
                # Another file took the name after the last one left: it starts afresh.
            self._db.execute(
                "INSERT OR REPLACE INTO files (relative, device, inode, size, mtime_ns, attempts) "
                "VALUES (?, ?, ?, ?, ?, 1)",
                (key, identity.device, identity.inode, identity.size, identity.mtime_ns),
            )
            return Entry(relative, identity, 1)

    def decide(
        self, relative: str, outcome: str, target: Path, sidecar: Path, sidecar_text: str | None
    ) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE files SET outcome = ?, target = ?, sidecar = ?, sidecar_text = ? WHERE relative = ?",
                (outcome, _db(str(target)), _db(str(sidecar)), _db(sidecar_text), _db(relative)),
            )

    def finish(self, relative: str, outcome: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM files WHERE relative = ?", (_db(relative),))
            self._db.execute(
                "INSERT INTO totals VALUES (?, 1) ON CONFLICT(outcome) DO UPDATE SET count = count + 1", (outcome,)
            )

    def release(self, relative: str) -> None:
        """Undo a claim that ended without an outcome through no fault of the file (shutdown)."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE files SET attempts = attempts - 1 WHERE relative = ? AND outcome IS NULL", (_db(relative),)
            )
            self._db.execute("DELETE FROM files WHERE relative = ? AND attempts <= 0", (_db(relative),))

    def forget(self, relative: str) -> None:
        """Drop a row whose file is gone and whose outcome cannot be completed."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM files WHERE relative = ?", (_db(relative),))

    # -- reading ---------------------------------------------------------------------------

    def unfinished(self) -> list[Entry]:
        with self._lock:
            return [_entry(row) for row in self._db.execute("SELECT * FROM files ORDER BY relative")]

    def totals(self) -> dict[str, int]:
        """Files finished per outcome, over every run that used this state folder."""
        with self._lock:
            return dict(self._db.execute("SELECT outcome, count FROM totals ORDER BY outcome").fetchall())


def _db(value: str | None) -> str | bytes | None:
    """SQLite text must be valid UTF-8: a file name that is not is stored as its raw bytes (a BLOB)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape")


def _py(value: str | bytes | None) -> str | None:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _entry(row: tuple) -> Entry:
    relative, device, inode, size, mtime_ns, attempts, outcome, target, sidecar, sidecar_text = row
    return Entry(_py(relative), FileIdentity(device, inode, size, mtime_ns), attempts, outcome, _py(target),
                 _py(sidecar), _py(sidecar_text))
