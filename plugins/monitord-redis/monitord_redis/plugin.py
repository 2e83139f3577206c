"""The hook implementation monitord discovers through the ``monitord`` entry point.

``bus.url``'s scheme names the transport: ``redis://`` and ``rediss://`` (TLS) for a
server on the network, ``unix://`` for one on a local socket; all three are this one.
"""

from __future__ import annotations

from monitord.hookspecs import Register, hookimpl

from .transport import RedisTransport

SCHEMES = ("redis", "rediss", "unix")


@hookimpl
def register_transports(register: Register) -> None:
    for scheme in SCHEMES:
        register(scheme, RedisTransport)
