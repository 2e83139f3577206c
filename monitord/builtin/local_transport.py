"""Built-in transport ``local``: inference and monitoring in one process (no ``bus.url``)."""

from __future__ import annotations

from monitord.hookspecs import hookimpl
from monitord.transport.local import LocalTransport


@hookimpl
def register_transports(register) -> None:
    register("local", LocalTransport)
