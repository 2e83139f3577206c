"""What a source is: something that submits images to the pipeline and handles outcomes.

A source's factory (registered through ``register_sources``) receives a
``SourceContext``. The daemon calls ``setup()`` before the HTTP server starts, so a
source may add routes to ``context.app``; ``start()`` once the model is loaded; and
``stop()`` at shutdown, which must stop taking in new work and return only once every
item already taken in has its outcome handled (a file moved, a response sent).

A source whose work can be split by name (``partitioned = True``, the folder source) may
run in several inference processes on one host over one shared folder, each over its
share (``SourceContext.partition``, from ``folder.share``): it must then keep its state
where every process can share it, and find its own work (each share watches for itself).
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import web

from monitord.metrics import Metrics
from monitord.pipeline import Pipeline
from monitord.settings import Settings


@dataclass(frozen=True)
class Partition:
    """This process's share of a partitioned source's work: share ``index`` of ``count``.

    A key (a file's path under the inbox) belongs to exactly one share, the same one in
    every process and every run with the same ``count``: CRC-32 of its UTF-8 bytes, not
    Python's ``hash``, which differs from process to process.
    """

    index: int
    count: int

    def owns(self, key: str) -> bool:
        return self.share_of(key, self.count) == self.index

    @staticmethod
    def share_of(key: str, count: int) -> int:
        """The index of the share, of ``count``, that ``key`` belongs to."""
        return zlib.crc32(key.encode("utf-8", "surrogateescape")) % count


@dataclass
class SourceContext:
    """What the daemon lends a source."""

    name: str
    settings: Settings
    pipeline: Pipeline
    metrics: Metrics
    app: web.Application
    #: This source's table from the ``source_options`` setting (third-party sources).
    options: dict[str, Any] = field(default_factory=dict)
    #: This process's share of the work, for a partitioned source run by several
    #: processes; None: all of it.
    partition: Partition | None = None


class Source(ABC):
    """Base class for sources; see the module docstring for the lifecycle."""

    #: Whether the work can be split among processes by ``Partition`` (see the module
    #: docstring). The source must then keep its state where every process can share it.
    partitioned: ClassVar[bool] = False

    def __init__(self, context: SourceContext) -> None:
        self.context = context

    @property
    def name(self) -> str:
        return self.context.name

    def setup(self) -> None:
        """Add HTTP routes or check settings; runs before the server starts."""

    def describe(self) -> str:
        """One line for the start-up log: where this source takes images from."""
        return self.name

    @abstractmethod
    async def start(self) -> None:
        """Begin taking in work; return promptly (run loops in tasks)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop taking in work; return once everything taken in is finished."""
