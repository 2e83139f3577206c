"""The whole configuration checked before anything slow or visible happens.

A daemon that binds its port, loads a model for fifteen seconds and only then finds a
misspelled detector type (or, worse, starts and leaves a detector on a signal no model
produces idle for ever) wastes a deploy and hides the mistake. ``check_configuration``
builds nothing lasting and loads nothing heavy: it asks each plugin to check its part of
the settings (sources and sinks by name and options, the model plugin's own keys and the
signals its model will produce, each detector's type and parameters) and reports every
problem at once, one line each, naming the key and the value.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monitord.alerting.sinks import SinkContext, build_sinks
from monitord.detectors import ERROR_SIGNAL
from monitord.metrics import Metrics
from monitord.model import declared_signals
from monitord.plugins import PluginError, PluginHost
from monitord.reference import ReferenceError, read_summary
from monitord.settings import DetectorSpec, Settings, SettingsError
from monitord.transport.contract import TransportContext
from monitord.alerting.delivery import redact

log = logging.getLogger("monitord.preflight")


def check_configuration(settings: Settings, plugins: PluginHost, role: str = "all") -> None:
    """Raise ``SettingsError`` listing every problem the settings have for ``role``; return if none."""
    problems: list[str] = []
    problems += _check_transport(settings, plugins, role)
    problems += _check_sources(settings, plugins)
    signals, model_problems = _check_model(settings, plugins)
    problems += model_problems
    problems += _check_detectors(settings, plugins, signals)
    if settings.alerts.enabled and role != "inference":  # the monitor sends the alerts
        problems += _check_sinks(settings, plugins)
    if len(problems) == 1:
        raise SettingsError(f"invalid settings: {problems[0]}")
    if problems:
        raise SettingsError("\n".join([f"invalid settings ({len(problems)} problems):", *(f"  {p}" for p in problems)]))


def _check_transport(settings: Settings, plugins: PluginHost, role: str) -> list[str]:
    transport = settings.bus.transport
    if settings.pipeline.workers:
        if role != "all":
            return [f"pipeline.workers = {settings.pipeline.workers} starts the roles itself: run it with "
                    f"--role all (not {role}), or set pipeline.workers = 0 to run one role here"]
        if transport == "local":  # a private redis-server on a Unix socket (monitord.supervisor)
            try:
                plugins.factory("transport", "unix")
            except PluginError:
                return [f"pipeline.workers = {settings.pipeline.workers} joins its processes by Redis Streams: "
                        "install the monitord-redis plugin (pip install -e plugins/monitord-redis) or set "
                        "pipeline.workers = 0"]
            return []
    elif transport == "local":
        if role != "all":
            return [f"--role {role} needs a stream other processes can reach: set bus.url (MONITORD_BUS__URL), "
                    "e.g. redis://127.0.0.1:6379/0; without it one process plays both roles (--role all)"]
        return []
    try:
        factory = plugins.factory("transport", transport)
    except PluginError as error:
        return [f"bus.url = {redact(settings.bus.url or '')!r}: {error} (install monitord-redis for redis:// URLs)"]
    try:  # the factory checks the URL and options; it connects only in start()
        factory(TransportContext(settings, Path(settings.state_dir), "preflight", Metrics()))
    except ValueError as error:  # it names the URL, without its credentials
        return [str(error)]
    return []


def _check_sources(settings: Settings, plugins: PluginHost) -> list[str]:
    problems = []
    for index, name in enumerate(settings.sources):
        try:
            plugins.factory("source", name)
        except PluginError as error:
            problems.append(f"sources[{index}] = {name!r}: {error}")
    return problems


def _check_model(settings: Settings, plugins: PluginHost) -> tuple[frozenset[str] | None, list[str]]:
    """The signals the configured model will produce (None: its plugin does not say)."""
    try:
        factory = plugins.factory("model", settings.model.type)
    except PluginError as error:
        return None, [f"model.type = {settings.model.type!r}: {error}"]
    try:
        signals = declared_signals(factory, settings.model)
    except SettingsError as error:
        return None, _problem_lines(str(error))
    except ValueError as error:
        return None, [f"model ({settings.model.type}): {error}"]
    if signals is None:
        return None, []
    return signals | _embedding_signals(settings), []


def _embedding_signals(settings: Settings) -> frozenset[str]:
    """The projected embedding signals the artifact's reference adds (none without one).

    An unreadable reference is not refused here: the daemon says so when it loads it."""
    try:
        summary = read_summary(settings.model_artifact)
    except ReferenceError:
        return frozenset()
    embedding = (summary or {}).get("embedding") or {}
    return frozenset(map(str, embedding.get("signals") or ()))


def _check_detectors(settings: Settings, plugins: PluginHost, signals: frozenset[str] | None) -> list[str]:
    problems = []
    names = [spec.label for spec in settings.detectors]
    for index, spec in enumerate(settings.detectors):
        where = f"detectors[{index}] (name {spec.label!r})"
        if names.count(spec.label) > 1:
            problems.append(f"{where}: the name is used by another detector too; give each a distinct `name`")
        try:
            factory = plugins.factory("detector", spec.type)
        except PluginError as error:
            problems.append(f"{where}.type = {spec.type!r}: {error}")
            continue
        if signals is not None:
            unknown = [name for name in spec.signals if name not in signals and name != ERROR_SIGNAL]
            if unknown:
                offered = ", ".join(sorted(signals | {ERROR_SIGNAL}))
                problems.append(
                    f"{where}.signal = {spec.signal!r}: model {settings.model.type!r} produces no signal "
                    f"{', '.join(map(repr, unknown))}; it produces {offered}"
                )
                continue
        problems += _check_detector_parameters(where, spec, factory)
    return problems


def _check_detector_parameters(where: str, spec: DetectorSpec, factory) -> list[str]:
    """Build the detector without a reference: its factory checks the parameters."""
    try:
        detector = factory(spec, None)
    except (ValueError, TypeError) as error:
        message = str(error)
        return [message if message.startswith("detector ") else f"{where}: {message}"]
    close = getattr(detector, "close", None)
    if callable(close):
        close()
    return []


def _check_sinks(settings: Settings, plugins: PluginHost) -> list[str]:
    scratch = Metrics()

    def context(spec) -> SinkContext:
        return SinkContext(name=spec.label, type=spec.type, options=spec.options(), state_dir=Path(settings.state_dir),
                           metrics=scratch, alerts=settings.alerts)

    try:
        build_sinks(settings.sinks, lambda kind: plugins.factory("sink", kind), context)
    except ValueError as error:
        return [str(error)]
    return []


def _problem_lines(message: str) -> list[str]:
    """A plugin's ``invalid settings (N problems):`` block as one problem per line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("invalid settings"):
        lines = lines[1:]
    return [line.removeprefix("invalid settings: ") for line in lines]
