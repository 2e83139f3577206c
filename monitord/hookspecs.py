"""The plugin contract: the hooks a monitord plugin may implement.

Every hook only *registers factories*. pluggy calls hooks synchronously at start-up, so
nothing slow or asynchronous belongs in a hook body; the work happens later, in the
methods of the objects the factories build. Built-in sources, sinks and commands are registered
through these same hooks (see ``monitord.builtin``), so a third-party plugin has exactly
the powers of a built-in one.

A plugin is a module (or any object) with functions decorated by ``hookimpl``, exposed
through an entry point in the group ``monitord``::

    [project.entry-points.monitord]
    my_plugin = "my_package.plugin"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    import click

PROJECT_NAME = "monitord"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: ``register(name, factory)``: the callback every ``register_*`` hook receives.
Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def register_sources(register: Register) -> None:
    """Register image sources by name.

    ``factory(context: monitord.sources.SourceContext) -> monitord.sources.Source``.
    A source turns something outside (files, requests, a message bus) into
    ``WorkItem``s submitted to the pipeline, and decides what to do with each outcome.
    A source is enabled when its name is listed in the ``sources`` setting.
    """


@hookspec
def register_models(register: Register) -> None:
    """Register model loaders by name (the ``model.type`` setting picks one).

    ``factory(settings: monitord.settings.ModelSettings, state_dir: Path) ->
    monitord.model.Model``. The factory may be slow (it loads weights, or trains a
    default model on first use); the daemon calls it off the event loop.

    Optionally the factory also has ``signals(settings) -> Collection[str]``: the names
    of the signals its model will produce, after checking the plugin's own keys of
    ``[model]`` (raise ``monitord.settings.SettingsError`` naming a bad one). It must be
    fast and load nothing: the daemon calls it before anything else at start-up, to
    refuse a detector watching a signal the model never produces.
    """


@hookspec
def register_detectors(register: Register) -> None:
    """Register drift detector types by name (``type`` in each ``detectors`` entry).

    ``factory(spec: monitord.settings.DetectorSpec, reference: numpy.ndarray | None)
    -> monitord.detectors.Detector``. ``spec.params()`` holds the type's own
    parameters; ``reference`` holds the model's saved reference values of the watched
    signal(s), shape (n,) or (n, d) for ``spec.signals`` of length d, or None when the
    detector must take its reference from the stream. Raise ``ValueError`` naming the
    bad parameter; the daemon refuses to start with that message. At start-up, before
    the model loads, the daemon calls the factory once with ``reference=None`` only to
    check the parameters, so building without a reference must be cheap.
    """


@hookspec
def register_sinks(register: Register) -> None:
    """Register alert sinks by name (``type`` in each ``[[sinks]]`` entry).

    ``factory(context: monitord.alerting.sinks.SinkContext) -> monitord.alerting.sinks.Sink``.
    ``context`` carries the instance's ``name``, its ``options`` (the entry's other keys),
    ``state_dir``, ``metrics``, the ``alerts`` settings, ``external_url`` and
    ``shutdown_timeout``. Validate the options in the factory and raise ``ValueError``
    naming the bad key; the daemon refuses to start with that message. The sink's
    ``async start(firing)``, ``async send(alerts)`` and ``async close()`` run on the event
    loop: ``send`` must return promptly (queue, and deliver in a task of your own), and
    ``close`` flushes within ``context.shutdown_timeout``. Each ``send`` gets
    ``monitord.alerting.alert.Alert`` records, one notification each (firing, re-notified
    or resolved). The built-in ``log``, ``webhook`` and ``alertmanager`` sinks register
    through this hook.
    """


@hookspec
def register_transports(register: Register) -> None:
    """Register transports by name: the stream between inference and monitoring.

    ``factory(context: monitord.transport.contract.TransportContext) ->
    monitord.transport.contract.Transport``. ``bus.url``'s scheme picks one (``redis://``
    → ``redis``); without ``bus.url`` the built-in ``local`` one, in-process, serves. The
    contract, and why each method is there, is ``monitord/transport/contract.py``; the
    core imports no broker. Check the settings in the factory and raise ``ValueError``
    naming the bad key; connect in ``start()``.
    """


@hookspec
def register_routes(register: Register) -> None:
    """Add ``GET`` routes to the daemon's HTTP server, by path (``register(path, factory)``).

    ``factory(context: monitord.plugin_routes.RouteContext) -> handler``, where ``handler``
    is an aiohttp handler, ``async def handler(request) -> web.StreamResponse``, answering
    ``GET`` (and ``HEAD``) on ``path``. ``context.settings`` are the daemon's settings. The
    routes are added before the server starts; a path under ``/v1/`` is behind
    ``http.token`` like the daemon's own. The handler runs on the event loop: anything
    slow (reading files, computing a report) goes to a thread (``asyncio.to_thread``).
    monitord-evidently adds ``GET /v1/report`` this way.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``monitord`` command-line interface.

    ``cli`` is the root ``click.Group``; decorate functions with ``@cli.command()``.
    """
