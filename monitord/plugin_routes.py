"""HTTP routes that plugins add (``register_routes``), and the answer for a known route
whose plugin is not installed.

``GET /v1/report`` is a public name (the Evidently report) served by the optional
monitord-evidently distribution; without it the route still answers, 501, saying what to
install, rather than a bare 404 that looks like a typo.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from monitord.http_server import json_error
from monitord.plugins import PluginError, PluginHost
from monitord.settings import Settings

#: Public routes served by an optional plugin: path → (distribution, how to install it).
OPTIONAL_ROUTES: dict[str, tuple[str, str]] = {
    "/v1/report": ("monitord-evidently",
                   "pip install -e ./plugins/monitord-evidently (the README's set-up installs it)"),
}


@dataclass(frozen=True)
class RouteContext:
    """What a route's factory gets: the daemon's settings (``state_dir``, ``model``, ...)."""

    settings: Settings


def add_plugin_routes(app: web.Application, plugins: PluginHost, settings: Settings) -> None:
    """Add every plugin's ``GET`` route, then a 501 for each optional route left unserved."""
    taken = {resource.canonical for resource in app.router.resources()}
    context = RouteContext(settings)
    for path, registration in plugins.registered("route").items():
        if not path.startswith("/"):
            raise PluginError(f"plugin {registration.plugin.name} registered route {path!r}; a route's path "
                              "starts with /")
        if path in taken:
            raise PluginError(f"plugin {registration.plugin.name} registered route {path}, which the daemon "
                              "serves itself; pick another path")
        assert registration.factory is not None
        app.router.add_get(path, registration.factory(context))
        taken.add(path)
    for path, (distribution, install) in OPTIONAL_ROUTES.items():
        if path not in taken:
            app.router.add_get(path, _not_installed(path, distribution, install))


def _not_installed(path: str, distribution: str, install: str):
    async def answer(request: web.Request) -> web.Response:
        return json_error(501, f"GET {path} is served by the {distribution} plugin, which is not installed or not "
                               f"loaded (MONITORD_LOAD_PLUGINS); install it with {install} and restart the daemon")

    return answer
