"""Plugin loading and the registry of everything plugins register.

Built-in plugins (``monitord.builtin.DEFAULT_PLUGINS``) and entry-point plugins go through
the same hooks. ``MONITORD_LOAD_PLUGINS`` (comma-separated distribution names) restricts
which entry-point distributions load; built-ins always load, because the daemon cannot
run without them. An empty value loads no entry-point plugin at all.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Mapping

import click
import pluggy

from monitord import __version__, hookspecs

log = logging.getLogger("monitord.plugins")

ENTRY_POINT_GROUP = "monitord"
LOAD_PLUGINS_ENV = "MONITORD_LOAD_PLUGINS"
KINDS = ("source", "model", "detector", "sink", "transport", "route")


class PluginError(Exception):
    """A plugin could not be loaded or registered something invalid."""


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin module came from."""

    name: str
    distribution: str
    version: str


@dataclass(frozen=True)
class Registration:
    """One thing a plugin registered: a source, model, detector, sink, transport, route or command."""

    name: str
    kind: str
    factory: Callable[..., Any] | None
    plugin: PluginInfo

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "plugin": self.plugin.name,
            "distribution": self.plugin.distribution,
            "version": self.plugin.version,
        }


@dataclass
class PluginHost:
    """The plugin manager plus what each plugin registered, collected once."""

    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo] = field(default_factory=dict)
    #: Commands each plugin added, filled by ``add_commands``.
    command_registrations: list[Registration] = field(default_factory=list)
    _registrations: dict[str, dict[str, Registration]] = field(default_factory=dict)

    def registered(self, kind: str) -> Mapping[str, Registration]:
        """Everything of ``kind`` ("source", "model", ...) by name."""
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; expected one of {KINDS}")
        if kind not in self._registrations:
            self._registrations[kind] = self._collect(kind)
        return self._registrations[kind]

    def factory(self, kind: str, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``, or an error that lists what is installed."""
        found = self.registered(kind)
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise PluginError(
                f"no {kind} named {name!r} is registered (installed: {known}); "
                f"check the spelling, or install the plugin that provides it "
                f"(`monitord plugins` lists what is loaded)"
            )
        factory = found[name].factory
        assert factory is not None
        return factory

    def add_commands(self, cli: click.Group) -> list[Registration]:
        """Let every plugin add its subcommands to ``cli``; return what each added."""
        added: list[Registration] = []
        for impl in self.pm.hook.register_commands.get_hookimpls():
            before = set(cli.commands)
            impl.function(cli=cli)
            for name in sorted(set(cli.commands) - before):
                added.append(Registration(name, "command", None, self._info(impl.plugin_name)))
        return added

    def _collect(self, kind: str) -> dict[str, Registration]:
        hook = getattr(self.pm.hook, f"register_{kind}s")
        found: dict[str, Registration] = {}
        # In registration order, built-ins first, so a clash names the later plugin.
        for impl in hook.get_hookimpls():
            info = self._info(impl.plugin_name)

            def register(name: str, factory: Callable[..., Any], _info: PluginInfo = info) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {_info.name} registered a {kind} with no name")
                if not callable(factory):
                    raise PluginError(f"plugin {_info.name} registered {kind} {name!r} with a non-callable factory")
                if name in found:
                    raise PluginError(
                        f"{kind} {name!r} is registered twice: by {found[name].plugin.name} "
                        f"({found[name].plugin.distribution}) and by {_info.name} "
                        f"({_info.distribution}); uninstall one, or restrict with {LOAD_PLUGINS_ENV}"
                    )
                found[name] = Registration(name, kind, factory, _info)

            impl.function(register=register)
        return found

    def _info(self, plugin_name: str) -> PluginInfo:
        return self.infos.get(plugin_name) or PluginInfo(plugin_name, "unknown", "unknown")


def allowed_distributions(environ: Mapping[str, str] = os.environ) -> set[str] | None:
    """Distribution names ``MONITORD_LOAD_PLUGINS`` allows, or None when it is unset."""
    raw = environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {_normalise(name) for name in raw.split(",") if name.strip()}


def load_plugins(environ: Mapping[str, str] = os.environ) -> PluginHost:
    """A plugin manager with the built-ins and the allowed entry-point plugins loaded."""
    from monitord.builtin import DEFAULT_PLUGINS

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm)
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        pm.register(module, name=module_name)
        host.infos[module_name] = PluginInfo(module_name, "monitord", __version__)

    allowed = allowed_distributions(environ)
    for entry_point in _entry_points():
        dist_name = entry_point.dist.name if entry_point.dist else "unknown"
        if allowed is not None and _normalise(dist_name) not in allowed:
            log.debug("skipping plugin %s from %s (not in %s)", entry_point.name, dist_name, LOAD_PLUGINS_ENV)
            continue
        if pm.has_plugin(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:
            raise PluginError(
                f"plugin {entry_point.name!r} from distribution {dist_name} failed to import: "
                f"{type(error).__name__}: {error}; reinstall it, or leave it out with "
                f"{LOAD_PLUGINS_ENV}"
            ) from error
        pm.register(plugin, name=entry_point.name)
        version = entry_point.dist.version if entry_point.dist else "unknown"
        host.infos[entry_point.name] = PluginInfo(entry_point.name, dist_name, version)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"a plugin implements a hook monitord does not have: {error}") from error
    return host


def _entry_points() -> list[EntryPoint]:
    # Deduplicate: the same distribution can be visible twice on sys.path.
    seen: set[tuple[str, str]] = set()
    unique = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        key = (entry_point.name, entry_point.value)
        if key not in seen:
            seen.add(key)
            unique.append(entry_point)
    return unique


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")
