"""Stopping a task that swallows a cancellation, as redis-py's commands do now and then on
Python 3.11 (``asyncio.wait_for`` loses a cancel that arrives as the command completes)."""

from __future__ import annotations

import asyncio

from monitord.cancelling import cancel_and_wait


async def test_a_loop_that_swallowed_a_cancellation_is_stopped_all_the_same() -> None:
    swallowed = 0

    async def stubborn_loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed < 2:  # as wait_for does: the cancel is lost, the loop goes on
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn_loop())
    await asyncio.sleep(0.02)
    assert await cancel_and_wait([task], timeout=30) == set()
    assert task.cancelled()
    assert swallowed == 2


async def test_a_task_that_never_ends_is_given_up_on_and_named(caplog) -> None:
    released = asyncio.Event()

    async def deaf() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(deaf(), name="deaf-loop")
    await asyncio.sleep(0.02)  # inside its loop (a task cancelled before it starts just ends)
    left = await cancel_and_wait([task], timeout=0.3)
    assert left == {task}
    assert "deaf-loop" in caplog.text
    released.set()
    await task


async def test_finished_tasks_have_their_exceptions_retrieved() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task]) == set()
    assert task.done() and not task._log_traceback  # noqa: SLF001 - what "never retrieved" reads
