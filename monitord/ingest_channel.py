"""Messages between the main process and an ingest worker: pickled tuples over a Unix
socket pair, each preceded by its length.

Pickle is safe here because both ends are this daemon's own processes and the socket
pair is never reachable from outside (it is made before the worker starts and passed
to it as an open descriptor).

Messages, ``(kind, ...)``:

- main → worker: ``("config", settings, main_url)`` first; ``("ack", seq)`` once a batch is
  recorded; ``("stop",)`` to finish in-flight work and exit.
- worker → main: ``("ready", pid)``; ``("batch", seq, predictions, signals, metric_records)``;
  ``("metrics", metric_records)``; ``("depths", {stage: items})``; ``("stopped",)`` last.
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("!I")


class ChannelClosed(Exception):
    """The other end went away (it exited, or was killed)."""


class Channel:
    """One end of the socket pair, for use on an event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue ``message``; ``ChannelClosed`` if the other end is known to be gone."""
        if self._writer.is_closing():
            raise ChannelClosed("the other process closed the channel")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.writelines((_LENGTH.pack(len(data)), data))

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as error:
            raise ChannelClosed(str(error)) from None

    async def receive(self) -> tuple[Any, ...]:
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            data = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise ChannelClosed("the other process closed the channel") from error
        return pickle.loads(data)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
