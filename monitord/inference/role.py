"""The inference role in a daemon: sources, the model and the pipeline, publishing.

Sources are built and set up at construction (a bad source setting fails before the
server binds; the HTTP source adds its route then). ``start`` loads the model off the
event loop (it may train the default one on a first start), publishes its card for the
monitor, starts the pipeline with the transport's ``publish`` and opens the sources.
``drain`` lets in-flight work finish at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiohttp import web

from monitord.background import BackgroundJobs
from monitord.metrics import Metrics
from monitord.model import Model, declared_signals
from monitord.pipeline import Pipeline
from monitord.plugins import PluginHost
from monitord.reference import ReferenceError, ServedReference, reference_for
from monitord.reference.serving import STREAM
from monitord.settings import Settings
from monitord.sources import Partition, Source, SourceContext
from monitord.status_page.thumbnails import Thumbnails
from monitord.transport.contract import Transport
from monitord.transport.entries import ModelCard

log = logging.getLogger("monitord")


class StartupError(Exception):
    """The daemon cannot start; the message says what to fix."""


class InferenceRole:
    def __init__(self, settings: Settings, metrics: Metrics, app: web.Application, plugins: PluginHost,
                 transport: Transport, background: BackgroundJobs, origin: str,
                 on_state: Callable[[str], None], thumbnails: Thumbnails | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.plugins = plugins
        self.transport = transport
        self._background = background
        self._on_state = on_state
        self.model: Model | None = None
        #: The reference the detectors get, once the model is loaded.
        self.reference: ServedReference | None = None
        self.pipeline = Pipeline(settings.pipeline, metrics, origin, transport.lag, settings.bus.max_lag, thumbnails)
        self.sources = [self._build_source(name, app) for name in settings.sources]
        metrics.declare_sources(settings.sources)

    def _build_source(self, name: str, app: web.Application) -> Source:
        factory = self.plugins.factory("source", name)
        share = self.settings.folder.partition()
        context = SourceContext(name=name, settings=self.settings, pipeline=self.pipeline, metrics=self.metrics,
                                app=app, options=self.settings.source_options.get(name, {}),
                                partition=Partition(*share) if share is not None else None)
        return factory(context)

    def setup(self) -> None:
        """Sources check their settings and add their routes (before the server starts)."""
        for source in self.sources:
            try:
                source.setup()
            except Exception as error:
                raise StartupError(f"source {source.name} cannot start: {error}") from error

    async def start(self) -> None:
        self._on_state("loading model")
        try:
            model = await self._background.run("load-model", self._load_model)
        except Exception as error:
            raise StartupError(f"cannot load the model: {error}") from error
        self.model = model
        self.metrics.describe_build(model=model.name, device=model.device)
        log.info("model %s on %s, %d classes", model.name, model.device, len(model.class_names))
        try:
            reference = await self._background.run("load-reference", reference_for, model,
                                                    self.settings.model_artifact)
        except ReferenceError as error:
            raise StartupError(str(error)) from None
        self.reference = reference
        _log_reference(reference)
        await self.transport.publish_model(self._card(model, reference))
        await self.pipeline.start(model, self.transport.publish, reference.derive())
        for source in self.sources:
            await source.start()
            log.info("source %s", source.describe())

    def _load_model(self) -> Model:
        factory = self.plugins.factory("model", self.settings.model.type)
        return factory(self.settings.model, self.settings.state_dir)

    def _card(self, model: Model, reference: ServedReference) -> ModelCard:
        factory = self.plugins.factory("model", self.settings.model.type)
        signals = (declared_signals(factory, self.settings.model) or frozenset(model.reference_signals)) | set(
            reference.projection.names if reference.projection is not None else ())
        return ModelCard(model.name, tuple(model.class_names), tuple(sorted(signals)), reference.signals,
                         reference.description)

    async def drain(self) -> None:
        """Stop taking work and let what was taken finish (files moved, clients answered)."""
        self.pipeline.flush_early()
        await asyncio.gather(*(source.stop() for source in self.sources))
        await self.pipeline.drain()

    async def close(self) -> None:
        await self.pipeline.close()


def _log_reference(reference: ServedReference) -> None:
    if reference.source == STREAM:
        log.warning("%s", reference.description["note"])
    else:
        where = reference.description.get("path") or "the model's own metadata"
        log.info("drift reference: %d images, from %s", reference.description.get("samples", 0), where)
