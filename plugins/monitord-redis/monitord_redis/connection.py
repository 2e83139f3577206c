"""Reaching Redis: a client whose every wait is bounded, and errors a user can act on.

A command that cannot reach Redis fails at once instead of retrying for seconds: an HTTP
client is better told 503 with Retry-After than kept waiting, and a folder file waits in
the inbox anyway. No command is retried on its own: a retried ``XADD`` whose first reply
was lost would put its batch in the stream twice. A connection Redis closed (a restart)
is replaced when it is next taken from the pool, so recovery needs no retry either.
"""

from __future__ import annotations

import urllib.parse
from contextlib import contextmanager
from typing import Iterator

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from monitord.transport.contract import TransportUnavailable

#: Seconds to wait for a connection to be set up (an unreachable host, a firewall).
CONNECT_TIMEOUT_SECONDS = 2.0
#: Seconds to wait for any reply; longer than every blocking read this plugin makes.
COMMAND_TIMEOUT_SECONDS = 5.0


def shown_url(url: str) -> str:
    """``url`` without user name, password or query (which may hold a password too):
    what logs and error messages show."""
    parts = urllib.parse.urlsplit(url)
    where = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, where, parts.path, "", ""))


def check_url(url: str) -> None:
    """``ValueError`` naming ``bus.url`` when redis-py cannot read ``url``."""
    try:
        redis.asyncio.connection.parse_url(url)
    except ValueError as error:
        raise ValueError(f"bus.url = {shown_url(url)!r} is not a Redis URL: {error} "
                         "(redis://host:6379/0, rediss://host:6380/0 or unix:///path/redis.sock?db=0)") from None


def open_client(url: str) -> redis.asyncio.Redis:
    """A client on ``url`` (connections are made when first needed)."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=COMMAND_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )


@contextmanager
def reaching(where: str) -> Iterator[None]:
    """Turn redis-py's errors inside the block into ``TransportUnavailable`` saying what to check."""
    try:
        yield
    except redis.exceptions.AuthenticationError as error:
        raise TransportUnavailable(
            f"Redis at {where} refused the credentials ({error}); check the user name and password "
            "in bus.url (MONITORD_BUS__URL)") from None
    except redis.exceptions.TimeoutError:
        raise TransportUnavailable(
            f"Redis at {where} did not answer within {COMMAND_TIMEOUT_SECONDS:g} s; check that it is not "
            "overloaded, paused or behind a failing network") from None
    except (redis.exceptions.ConnectionError, OSError) as error:
        raise TransportUnavailable(
            f"Redis at {where} cannot be reached ({error}); check that redis-server runs there and that "
            "bus.url (MONITORD_BUS__URL) names it") from None
    except redis.exceptions.RedisError as error:
        raise TransportUnavailable(
            f"Redis at {where} refused a command: {type(error).__name__}: {error}; check its log "
            "(maxmemory reached? a read-only replica? a key under bus.stream written by something else?)"
        ) from None
