"""Stopping asyncio tasks for sure, although a library may drop a cancellation.

On Python 3.11 ``asyncio.wait_for`` loses a cancellation that arrives just as the operation
it waits for completes (CPython gh-86296, fixed in 3.12). redis-py sends every command
through ``wait_for`` when a socket timeout is set, so now and then one ``cancel()`` of a
loop that talks to Redis is swallowed, the loop goes on, and whoever awaits it waits for
ever. Cancelling again until the task has ended stops it at its next wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("monitord")

#: Seconds between cancellations of a task that has not ended yet.
RECANCEL_SECONDS = 0.1


async def cancel_and_wait(tasks: Iterable[asyncio.Future[object]], timeout: float = 10.0) -> set[asyncio.Future[object]]:
    """Cancel ``tasks`` and wait until each has ended, cancelling again every
    ``RECANCEL_SECONDS``; give up after ``timeout`` seconds, log which ones did not end and
    return them. Their results and exceptions are discarded, as ``gather(...,
    return_exceptions=True)`` would."""
    pending = {task for task in tasks if not task.done()}
    finished = {task for task in tasks if task.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        done, pending = await asyncio.wait(pending, timeout=min(RECANCEL_SECONDS, remaining))
        finished |= done
    for task in finished:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit
    if pending:
        log.error("%d task(s) did not end within %g s of being cancelled: %s", len(pending), timeout,
                  ", ".join(sorted(str(getattr(task, "get_name", lambda: task)()) for task in pending)))
    return pending
