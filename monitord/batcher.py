"""The micro-batcher: trade a little latency for the throughput of batched inference."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def collect_batch(
    queue: "asyncio.Queue[T | None]", max_size: int, max_delay: float, into: list[T] | None = None
) -> list[T]:
    """Take up to ``max_size`` items from ``queue``.

    Waits as long as it takes for the first item, then at most ``max_delay`` seconds more
    for the batch to fill. A ``None`` in the queue closes the batch at once (the pipeline
    puts one there to flush a partial batch at shutdown); it may return an empty list.
    The batch grows in ``into`` when given, so its size can be watched while it forms.
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
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                break
        if item is None:
            break
        batch.append(item)
    return batch
