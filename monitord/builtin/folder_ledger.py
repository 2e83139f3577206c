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

Each step has a group form (``begin_many``, ``decide_many``, ``finish_many``,
``release_many``, ``forget_many``) that does the step for many files in one transaction:
all of them or, when anything fails, none of them. The folder source uses those, so a
file costs a fraction of a commit instead of three; the one-file forms are the same
transaction with one file in it.

Commits use ``synchronous=NORMAL``: they survive the process being killed (the usual
crash), and a power cut may forget the last few, which means a file is processed again,
never lost. Every method is safe to call from any thread, and several processes may
share the ledger (worker processes, each with files of its own): SQLite lets them write
in turn, waiting up to 30 s for one another.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from monitord.state_files import create_private_file, make_private, make_private_folder, set_aside

log = logging.getLogger("monitord.folder.ledger")

SCHEMA_VERSION = 1
#: Seconds to wait for a ledger another process holds locked (opening, and each write).
OPEN_TIMEOUT = 30.0
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
    def of(cls, path: str | os.PathLike[str]) -> "FileIdentity | None":
        try:
            stat = os.lstat(path)
        except OSError:
            return None
        return cls.of_stat(stat)

    @classmethod
    def of_stat(cls, stat: os.stat_result) -> "FileIdentity":
        """The identity in a ``stat`` the caller already has (``lstat``, or ``fstat`` of an open file)."""
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


class Decision(NamedTuple):
    """An outcome to record (``decide_many``): where the file goes and the text beside it."""

    relative: str
    outcome: str
    target: str | os.PathLike[str]
    sidecar: str | os.PathLike[str]
    sidecar_text: str | None


class LedgerError(Exception):
    """The ledger cannot be opened; the message says where and what to do."""


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        make_private_folder(self.path.parent)
        try:
            return self._open_when_free()
        except sqlite3.OperationalError as error:  # locked, or cannot be read at all: not corrupt
            raise LedgerError(f"cannot open the folder ledger {self.path}: {error}; is another monitord using "
                              "this state_dir?") from None
        except sqlite3.DatabaseError as error:
            log.error("folder ledger %s is unreadable (%s); starting a new one", self.path, error)
            for suffix in ("-wal", "-shm"):
                sibling = self.path.with_name(self.path.name + suffix)
                if sibling.exists():
                    set_aside(sibling, "corrupt")
            if set_aside(self.path, "corrupt") is None:
                raise LedgerError(f"cannot move the unreadable ledger {self.path} aside; remove it by hand") from None
            return self._open_when_free()

    def _open_when_free(self) -> sqlite3.Connection:
        """``_open``, again while another process holds the lock it needs.

        Processes that open a new ledger at once (worker processes) can find it locked:
        turning on WAL takes an exclusive lock and SQLite does not wait for that one.
        A lock is an ``OperationalError``; corruption is the other ``DatabaseError``s.
        """
        deadline = time.monotonic() + OPEN_TIMEOUT
        delay = 0.01
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as error:
                busy = (error.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _open(self) -> sqlite3.Connection:
        # SQLite would create the file 0644, and its -wal and -shm files take the file's mode.
        create_private_file(self.path)
        for suffix in ("-wal", "-shm"):
            make_private(self.path.with_name(self.path.name + suffix))
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=OPEN_TIMEOUT)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            # OR IGNORE: worker processes open the ledger at the same time.
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {row[0]}, this monitord writes {SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole when the block ends, rolled back if it raises.

        The connection is in autocommit mode (``isolation_level=None``), so the transaction
        is begun and ended here, explicitly; ``IMMEDIATE`` takes the write lock at once.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # -- the three steps, for a group of files in one transaction each ----------------------
    #
    # Each statement covers a whole chunk of files (``IN (...)``, several rows of
    # ``VALUES``) rather than one file per statement: the sqlite3 module lets go of the GIL
    # around every step of a statement, and each time taking it back from the other
    # threads costs more than the step.

    def begin_many(self, claims: Iterable[tuple[str, FileIdentity]]) -> list[Entry]:
        """Claim files; returns each one's entry, in order, with the outcome where one was
        already decided (a crash came between deciding and moving: nothing is claimed then).

        All of the claims are recorded, or none of them.
        """
        claims = list(claims)
        keys = [_db(relative) for relative, _ in claims]
        entries: list[Entry] = []
        with self._transaction() as db:
            known: dict[str | bytes, tuple] = {}
            for chunk in _chunks(list(dict.fromkeys(keys)), 1):
                query = f"SELECT * FROM files WHERE relative IN ({_marks(len(chunk))})"
                known.update((row[0], row) for row in db.execute(query, chunk))
            claimed: dict[str | bytes, tuple] = {}
            for (relative, identity), key in zip(claims, keys):
                attempts = 1
                row = known.get(key)
                if row is not None:
                    entry = _entry(row)
                    if entry.identity == identity:
                        if entry.decided:
                            entries.append(entry)
                            continue
                        attempts = entry.attempts + 1
                    # Otherwise another file took the name after the last one left: it starts afresh.
                row = (key, identity.device, identity.inode, identity.size, identity.mtime_ns, attempts,
                       None, None, None, None)
                known[key] = claimed[key] = row
                entries.append(Entry(relative, identity, attempts))
            for chunk in _chunks(list(claimed.values()), 6):
                db.execute(
                    "INSERT OR REPLACE INTO files (relative, device, inode, size, mtime_ns, attempts) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                    [value for row in chunk for value in row[:6]],
                )
        return entries

    def decide_many(self, decisions: Iterable[Decision]) -> None:
        """Record outcomes (before anything moves): all of them, or none of them."""
        rows = [
            (_db(relative), outcome, _db(os.fspath(target)), _db(os.fspath(sidecar)), _db(text))
            for relative, outcome, target, sidecar, text in decisions
        ]
        with self._transaction() as db:
            if not _UPDATE_FROM:
                db.executemany("UPDATE files SET outcome = ?2, target = ?3, sidecar = ?4, sidecar_text = ?5 "
                               "WHERE relative = ?1", rows)
                return
            for chunk in _chunks(rows, 5):
                db.execute(
                    "UPDATE files SET outcome = v.column2, target = v.column3, sidecar = v.column4, "
                    "sidecar_text = v.column5 FROM (VALUES " + ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
                    + ") AS v WHERE files.relative = v.column1",
                    [value for row in chunk for value in row],
                )

    def finish_many(self, finished: Iterable[tuple[str, str]]) -> None:
        """Files whose outcome was carried out, as ``(relative, outcome)``: their rows go and
        each outcome's total grows by its count. All of them, or none of them."""
        finished = list(finished)
        counts = Counter(outcome for _, outcome in finished)
        with self._transaction() as db:
            self._delete(db, "", [relative for relative, _ in finished])
            db.executemany(
                "INSERT INTO totals VALUES (?, ?) ON CONFLICT(outcome) DO UPDATE SET count = count + excluded.count",
                list(counts.items()),
            )

    def release_many(self, relatives: Iterable[str]) -> None:
        """Undo claims that ended without an outcome through no fault of the files (shutdown)."""
        relatives = list(relatives)
        keys = [_db(relative) for relative in relatives]
        with self._transaction() as db:
            for chunk in _chunks(keys, 1):
                db.execute(f"UPDATE files SET attempts = attempts - 1 WHERE relative IN ({_marks(len(chunk))}) "
                           "AND outcome IS NULL", chunk)
            self._delete(db, "AND attempts <= 0", relatives)

    def forget_many(self, relatives: Iterable[str]) -> None:
        """Drop rows whose files are gone and whose outcomes cannot be completed."""
        with self._transaction() as db:
            self._delete(db, "", relatives)

    @staticmethod
    def _delete(db: sqlite3.Connection, condition: str, relatives: Iterable[str]) -> None:
        for chunk in _chunks([_db(relative) for relative in relatives], 1):
            db.execute(f"DELETE FROM files WHERE relative IN ({_marks(len(chunk))}) {condition}", chunk)

    # -- one file at a time ------------------------------------------------------------------

    def begin(self, relative: str, identity: FileIdentity) -> Entry:
        """Claim a file; returns its entry, with the outcome when one was already decided."""
        return self.begin_many([(relative, identity)])[0]

    def decide(
        self, relative: str, outcome: str, target: Path, sidecar: Path, sidecar_text: str | None
    ) -> None:
        self.decide_many([Decision(relative, outcome, target, sidecar, sidecar_text)])

    def finish(self, relative: str, outcome: str) -> None:
        self.finish_many([(relative, outcome)])

    def release(self, relative: str) -> None:
        """Undo a claim that ended without an outcome through no fault of the file (shutdown)."""
        self.release_many([relative])

    def forget(self, relative: str) -> None:
        """Drop a row whose file is gone and whose outcome cannot be completed."""
        self.forget_many([relative])

    # -- reading ---------------------------------------------------------------------------

    def unfinished(self) -> list[Entry]:
        with self._lock:
            return [_entry(row) for row in self._db.execute("SELECT * FROM files ORDER BY relative")]

    def totals(self) -> dict[str, int]:
        """Files finished per outcome, over every run that used this state folder."""
        with self._lock:
            return dict(self._db.execute("SELECT outcome, count FROM totals ORDER BY outcome").fetchall())


#: Values one statement may bind, at most (SQLITE_MAX_VARIABLE_NUMBER before 3.32).
MAX_BOUND = 999
#: ``UPDATE ... FROM`` arrived in SQLite 3.33.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)


def _chunks(values: list, per_row: int) -> Iterator[list]:
    """``values`` in pieces that bind at most ``MAX_BOUND`` values with ``per_row`` each."""
    size = MAX_BOUND // per_row
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _marks(count: int) -> str:
    return ", ".join(["?"] * count)


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
