"""What a source is: something that submits images to the pipeline and handles outcomes.

A source's factory (registered through ``register_sources``) receives a
``SourceContext``. The daemon calls ``setup()`` before the HTTP server starts, so a
source may add routes to ``context.app``; ``start()`` once the model is loaded; and
``stop()`` at shutdown, which must stop taking in new work and return only once every
item already taken in has its outcome handled (a file moved, a response sent).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from monitord.metrics import Metrics
from monitord.pipeline import Pipeline
from monitord.settings import Settings


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


class Source(ABC):
    """Base class for sources; see the module docstring for the lifecycle."""

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
