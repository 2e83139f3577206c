"""The stream between the two roles: what a transport plugin provides.

Inference publishes entries (``entries.PredictionBatch``, ``entries.LabelBatch``); the
monitor applies them in the order the stream holds them. A transport is registered
through ``register_transports`` and chosen by ``bus.url``: none is the in-process one
(``local``, one process, nothing to run beside it); ``redis://…`` is the Redis Streams
plugin's. One pipeline and one monitor serve every transport; only this contract differs.

Inference side (every inference process):

- ``publish(entry)`` returns once the entry is safe in the stream (Redis: the XADD was
  acknowledged; in-process: the monitor applied it), and only then is a client answered
  or a file moved. It raises ``TransportUnavailable`` when the stream cannot be reached:
  HTTP answers 503 with Retry-After, the folder leaves its files in the inbox.
- ``lag()`` is how many published entries the monitor has not applied yet, as last seen
  (None: unknown); past ``bus.max_lag`` inference refuses new work, so memory and the
  stream stay bounded when the monitor falls behind.
- ``verdicts(reply_to, timeout)`` waits for the monitor's verdicts on a label batch the
  caller published with that ``reply_to`` (``reply_address()`` makes one).
- ``monitor_status()`` is what the active monitor last published (its detectors' state),
  so that ``GET /v1/detectors`` answers on every node.
- ``publish_model(card)`` tells the monitor, which never loads the model, its name, classes
  and reference signals (``entries.ModelCard``), once the model is loaded.

Monitor side (``monitor_link()``; one active monitor at a time, any number of standbys):

- ``model_card()`` waits for the card an inference process published;
- ``acquire()`` waits until this process is the active monitor and returns the last
  checkpoint (None on a fresh stream); ``read(after, limit)`` gives the entries after a
  position, in order, waiting a little when there are none;
- ``commit(checkpoint)`` stores the monitor's state *with* the position of the last
  entry applied to it, in one atomic step, and fails with ``LeaseLost`` once another
  monitor took over. That pairing is what makes "applied exactly once" hold across
  crashes and takeovers: whoever continues restores the state and applies only what lies
  after its position;
- ``reply(reply_to, verdicts)`` and ``publish_status(status)`` carry answers back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from monitord.metrics import Metrics
from monitord.settings import Settings
from monitord.transport.entries import Entry, ModelCard, Verdict


class TransportUnavailable(Exception):
    """The stream cannot be reached now; the message says what to check. Retry later."""


class LeaseLost(Exception):
    """Another monitor is the active one now: this one must stop applying and stand by."""


@dataclass(frozen=True)
class Checkpoint:
    """The monitor's state as of the entry at ``position`` (``""``: before the first)."""

    position: str
    state: bytes


@dataclass(frozen=True)
class StreamEntry:
    """An entry as read from the stream: its position, and the entry or why it is unreadable."""

    position: str
    entry: Entry | None
    error: str = ""


@dataclass(frozen=True)
class TransportContext:
    """What the daemon lends a transport."""

    #: Every setting; ``settings.bus`` is the transport's own section.
    settings: Settings
    #: This process's state folder (a private server's socket, files of the in-process one).
    state_dir: Path
    #: This process's name in the stream (``alerts.instance``): whose entry, whose reply.
    instance: str
    metrics: Metrics


@runtime_checkable
class MonitorLink(Protocol):
    """The monitor's end of the stream."""

    #: Seconds between checkpoints: a crash costs re-applying at most this much.
    checkpoint_seconds: float

    async def model_card(self) -> ModelCard: ...

    async def acquire(self) -> Checkpoint | None: ...

    async def read(self, after: str, limit: int) -> Sequence[StreamEntry]: ...

    def applied(self, position: str) -> None:
        """Every entry up to ``position`` is applied (not yet checkpointed)."""
        ...

    async def commit(self, checkpoint: Checkpoint) -> None: ...

    async def reply(self, reply_to: str, verdicts: Sequence[Verdict]) -> None: ...

    async def publish_status(self, status: dict[str, Any]) -> None: ...

    async def release(self) -> None:
        """Give up being the active monitor (at shutdown), so a standby takes over at once."""
        ...


@runtime_checkable
class Transport(Protocol):
    """One stream, seen from one process."""

    #: Registered name (``local``, ``redis``), for logs and ``monitord plugins``.
    name: str

    async def start(self) -> None:
        """Connect; raise ``TransportUnavailable`` (with what to do) when it cannot."""
        ...

    async def close(self) -> None: ...

    async def publish(self, entry: Entry) -> None: ...

    async def publish_model(self, card: ModelCard) -> None: ...

    def lag(self) -> int | None: ...

    def reply_address(self) -> str: ...

    async def verdicts(self, reply_to: str, timeout: float) -> list[Verdict] | None: ...

    async def monitor_status(self) -> dict[str, Any] | None: ...

    def monitor_link(self) -> MonitorLink: ...
