"""Blocking start-up work that a stop request must not wait for.

Loading a model (importing torch, reading weights, or training the default model on a
first start) and building detectors take seconds in a thread and cannot be interrupted.
``asyncio.to_thread`` would make the whole process wait for them at exit (its executor's
threads are joined), so Ctrl-C during start-up would take as long as the start-up. Here
each job runs in its own daemon thread: cancelling the awaiting task leaves the thread
behind, and the process may exit without it (``os._exit``, so the interpreter does not
tear down modules under a thread still inside torch). Whatever such a job writes must be
written atomically, as the model artifact is (a staging folder renamed into place).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


class BackgroundJobs:
    """Runs blocking jobs in daemon threads and remembers them until they end."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    async def run(self, name: str, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` in a daemon thread; cancelling this await abandons it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            try:
                loop.call_soon_threadsafe(outcome)
            except RuntimeError:
                pass  # the loop is closed: nobody waits for this any more

        context = contextvars.copy_context()  # as asyncio.to_thread passes it on

        def target() -> None:
            try:
                result = context.run(function, *args)
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
                # Bound now: Python unbinds ``error`` when the except block ends, before the loop runs this.
                settle(lambda raised=error: future.done() or future.set_exception(raised))
            else:
                settle(lambda: future.done() or future.set_result(result))

        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return await future

    def unfinished(self) -> list[str]:
        """Names of the jobs still running (abandoned by a stop during start-up)."""
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        return [thread.name for thread in self._threads]
