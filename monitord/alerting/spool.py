"""A sink's on-disk spool: one JSON file per pending (URL, notification), oldest first.

Files are ``<state_dir>/spool/<sink>/<sequence>.json``, private (0600 in 0700 folders),
written atomically (temporary file, fsync, ``os.replace``, fsync of the folder) before
delivery is attempted and deleted once delivered, so a notification survives a receiver
outage, a restart and ``kill -9``. A file holds ``url_index`` (the place of its URL in the
sink's ``urls``), the headers to send and the body: never the URL, whose user info, path or
query often hold credentials; the sink resolves the index against its settings when it
delivers. Files written before (``url`` instead of ``url_index``) are read as ``legacy_url``
for the sink to migrate. The spool holds at most ``max_files``; when full the oldest is
dropped to make room. The index lives on the event loop; only the file I/O runs in threads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from monitord.state_files import make_private_folder, open_private_text, sync_directory

log = logging.getLogger("monitord.alerts")


@dataclass(frozen=True)
class SpoolEntry:
    sequence: int
    #: Which of the sink's URLs (0-based); -1 for a legacy entry until it is migrated.
    url_index: int
    body: bytes
    headers: dict[str, str]
    path: Path
    #: The full URL a file from before ``url_index`` holds; None otherwise.
    legacy_url: str | None = None


class Spool:
    def __init__(self, directory: Path, max_files: int) -> None:
        self.directory = Path(directory)
        self.max_files = max_files
        self._entries: OrderedDict[int, SpoolEntry] = OrderedDict()
        self._next = 1
        #: Sequences whose file is on disk; only those may be delivered.
        self._written: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def load(self) -> list[SpoolEntry]:
        """Read what an earlier run left (blocking I/O: call from a thread at start)."""
        make_private_folder(self.directory.parent)
        make_private_folder(self.directory)
        found = []
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short by a crash: never promised
                continue
            if path.suffix != ".json" or not path.stem.isdigit():
                continue
            try:
                found.append(self._read(path))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                log.error("spool file %s is unreadable (%s); moved aside as %s.bad", path, error, path.name)
                path.replace(path.with_name(path.name + ".bad"))
        found.sort(key=lambda entry: entry.sequence)
        for entry in found:
            self._entries[entry.sequence] = entry
            self._written.add(entry.sequence)
        self._next = (found[-1].sequence + 1) if found else 1
        return found

    @staticmethod
    def _read(path: Path) -> SpoolEntry:
        data = json.loads(path.read_text(encoding="utf-8"))
        headers = {str(k): str(v) for k, v in data.get("headers", {}).items()}
        body = data["body"].encode("utf-8")
        if "url_index" in data:
            index = data["url_index"]
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise ValueError(f"url_index {index!r} is not a place in a list")
            return SpoolEntry(int(path.stem), index, body, headers, path)
        return SpoolEntry(int(path.stem), -1, body, headers, path, legacy_url=str(data["url"]))

    def reserve(self, url_index: int, body: bytes, headers: dict[str, str]) -> tuple[SpoolEntry, list[SpoolEntry]]:
        """Index a new entry (write it with ``write`` before delivering); return it and the
        oldest entries dropped to stay within ``max_files``."""
        entry = SpoolEntry(self._next, url_index, body, dict(headers), self.directory / f"{self._next:016d}.json")
        self._next += 1
        dropped = []
        while len(self._entries) >= self.max_files:
            _, oldest = self._entries.popitem(last=False)
            self._written.discard(oldest.sequence)
            dropped.append(oldest)
        self._entries[entry.sequence] = entry
        return entry, dropped

    def migrated(self, entry: SpoolEntry, url_index: int) -> SpoolEntry:
        """``entry`` (a legacy one) with its URL replaced by ``url_index``, in its place in
        the index; write it with ``write`` to take the URL off the disk."""
        moved = dataclasses.replace(entry, url_index=url_index, legacy_url=None)
        if entry.sequence in self._entries:
            self._entries[entry.sequence] = moved
        return moved

    def next_for(self, url_index: int) -> SpoolEntry | None:
        """The oldest pending entry for the URL at ``url_index``, once its file is written
        (None before)."""
        for entry in self._entries.values():
            if entry.url_index == url_index:
                return entry if entry.sequence in self._written else None
        return None

    def mark_written(self, entry: SpoolEntry) -> None:
        if entry.sequence in self._entries:
            self._written.add(entry.sequence)

    def url_indexes(self) -> list[int]:
        return list(dict.fromkeys(entry.url_index for entry in self._entries.values()))

    def forget(self, entry: SpoolEntry) -> bool:
        """Take ``entry`` out of the index; False when it was already dropped."""
        self._written.discard(entry.sequence)
        return self._entries.pop(entry.sequence, None) is not None

    def contains(self, entry: SpoolEntry) -> bool:
        return entry.sequence in self._entries

    # Blocking file I/O, for asyncio.to_thread.

    def write(self, entry: SpoolEntry) -> None:
        make_private_folder(self.directory)
        data = json.dumps({"url_index": entry.url_index, "headers": entry.headers,
                           "body": entry.body.decode("utf-8")})
        temporary = entry.path.with_name(entry.path.name + ".tmp")
        with open_private_text(temporary) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, entry.path)
        sync_directory(self.directory)

    @staticmethod
    def delete(entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)
