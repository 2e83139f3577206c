"""Where everything lives in Redis: every key starts with ``bus.stream`` and a colon, so
one Redis can carry several streams (one per model or tenant) side by side."""

from __future__ import annotations

from dataclasses import dataclass

#: The one field of a stream entry: the batch in ``monitord.transport.entries``' binary form.
ENTRY_FIELD = b"entry"


@dataclass(frozen=True)
class StreamKeys:
    prefix: str

    @property
    def stream(self) -> str:
        """The stream of entries (``XADD`` by inference, ``XREAD`` by the monitor)."""
        return f"{self.prefix}:entries"

    @property
    def checkpoint(self) -> str:
        """Hash: the monitor's state with the position of the last entry applied to it."""
        return f"{self.prefix}:checkpoint"

    @property
    def lease(self) -> str:
        """String: the active monitor's token, expiring unless renewed."""
        return f"{self.prefix}:lease"

    @property
    def applied(self) -> str:
        """String: how many entries the stream had received up to the last one applied."""
        return f"{self.prefix}:applied"

    @property
    def status(self) -> str:
        """String: the detectors' state as the active monitor last published it (JSON)."""
        return f"{self.prefix}:status"

    @property
    def model(self) -> str:
        """String: the model card inference published (JSON)."""
        return f"{self.prefix}:model"

    def replies(self, node: str) -> str:
        """Pub/sub channel of one process: the verdicts on the labels it published."""
        return f"{self.prefix}:replies:{node}"

    @property
    def replies_prefix(self) -> str:
        return f"{self.prefix}:replies:"
