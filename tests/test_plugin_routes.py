"""Routes plugins add through ``register_routes``, and the answer for a known route whose
plugin is not installed."""

from __future__ import annotations

import pluggy
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from monitord import hookspecs
from monitord.hookspecs import hookimpl
from monitord.http_server import Readiness, build_app
from monitord.metrics import Metrics
from monitord.plugin_routes import RouteContext, add_plugin_routes
from monitord.plugins import PluginError, PluginHost
from monitord.settings import Settings

TOKEN = "route-token-0123456789"


def host_with_routes(**routes) -> PluginHost:
    class Plugin:
        @staticmethod
        @hookimpl
        def register_routes(register):
            for path, factory in routes.items():
                register(path, factory)

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(Plugin(), name="routes")
    return PluginHost(pm)


def hello(context: RouteContext):
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"state_dir": str(context.settings.state_dir)})

    return answer


async def test_a_plugin_route_is_served_behind_the_token() -> None:
    app = build_app(Metrics(), Readiness(), 1 << 20, TOKEN)
    add_plugin_routes(app, host_with_routes(**{"/v1/hello": hello}), Settings(state_dir="somewhere"))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/v1/hello")).status == 401
        answer = await client.get("/v1/hello", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status == 200 and await answer.json() == {"state_dir": "somewhere"}


async def test_the_report_route_without_its_plugin_says_what_to_install() -> None:
    app = build_app(Metrics(), Readiness(), 1 << 20)
    add_plugin_routes(app, host_with_routes(), Settings())
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/v1/report?window=1h")
        body = await answer.json()
        assert answer.status == 501 and "monitord-evidently" in body["error"] and "pip install" in body["error"]


@pytest.mark.parametrize(("path", "said"), [("v1/hello", "starts with /"), ("/healthz", "serves itself")])
def test_a_bad_route_path_is_refused_naming_the_plugin(path: str, said: str) -> None:
    app = build_app(Metrics(), Readiness(), 1 << 20)
    with pytest.raises(PluginError, match=f"plugin routes registered route .*{said}"):
        add_plugin_routes(app, host_with_routes(**{path: hello}), Settings())
