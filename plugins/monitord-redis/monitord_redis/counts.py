"""How far the monitor is behind: entries added to the stream against entries applied.

Redis counts every entry ever added to a stream (``XINFO STREAM``'s ``entries-added``,
Redis 7.0 and later), trimmed or not. The active monitor writes the same count as of the
last entry it applied (``StreamKeys.applied``), so the difference is what it has still to
apply, without reading a single entry. Before any monitor wrote it, every entry in the
stream is unapplied (nothing is trimmed before a checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio

from . import scripts
from .keys import StreamKeys


@dataclass(frozen=True)
class StreamCounts:
    #: Entries ever added to the stream.
    added: int
    #: Entries in the stream now (the rest were trimmed below a checkpoint).
    length: int
    #: ``added`` as of the last entry the monitor applied; None before one wrote it.
    applied: int | None

    @property
    def lag(self) -> int:
        """Entries published and not yet applied."""
        if self.applied is None:
            return self.length
        return max(0, self.added - self.applied)

    @property
    def before_first(self) -> int:
        """``added`` as of just before the first entry still in the stream."""
        return self.added - self.length


class CountsReader:
    def __init__(self, client: redis.asyncio.Redis, keys: StreamKeys) -> None:
        self._script = client.register_script(scripts.COUNTS)
        self._keys = keys

    async def read(self) -> StreamCounts:
        added, length, applied = await self._script(keys=[self._keys.stream, self._keys.applied])
        return StreamCounts(int(added), int(length), None if int(applied) < 0 else int(applied))
