"""The micro-batcher: trade a little latency for the throughput of batched inference."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def collect_batch(
    queue: "asyncio.Queue[T | None]",
    max_size: int,
    max_delay: float,
    into: list[T] | None = None,
    idle: asyncio.Event | None = None,
) -> list[T]:
    """Take up to ``max_size`` items from ``queue``.

    Waits as long as it takes for the first item, then at most ``max_delay`` seconds more
    for the batch to fill. With ``idle`` (set while the model has nothing to do), the
    batch closes as soon as nothing more is ready and the model is idle: waiting then
    would only add latency, and while the model is busy the batch keeps filling anyway.
    So a lone image goes straight through and a loaded daemon still batches.

    A ``None`` in the queue closes the batch at once (the pipeline puts one there to flush
    a partial batch at shutdown); it may return an empty list. The batch grows in
    ``into`` when given, so its size can be watched while it forms.
    """
    loop = asyncio.get_running_loop()
    batch = into if into is not None else []
    first = await queue.get()
    if first is None:
        return batch
    batch.append(first)
    deadline = loop.time() + max_delay
    while len(batch) < max_size:
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            remaining = deadline - loop.time()
            if remaining <= 0 or (idle is not None and idle.is_set()):
                break
            try:
                item = await _next_item(queue, remaining, idle)
            except TimeoutError:
                break
            if item is _IDLE:
                break
        if item is None:
            break
        batch.append(item)
    return batch


_IDLE = object()


async def _next_item(queue: "asyncio.Queue[T | None]", timeout: float, idle: asyncio.Event | None) -> object:
    """The next item, or ``_IDLE`` if the model became idle first; TimeoutError after ``timeout``."""
    if idle is None:
        return await asyncio.wait_for(queue.get(), timeout)
    getter = asyncio.ensure_future(queue.get())
    waiter = asyncio.ensure_future(idle.wait())
    try:
        done, _ = await asyncio.wait((getter, waiter), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not getter.done():
            getter.cancel()
    if getter in done:
        return getter.result()
    if getter.done() and not getter.cancelled():  # an item arrived as the model went idle
        return getter.result()
    if not done:
        raise TimeoutError
    return _IDLE
