"""Start-up jobs in threads of their own (``monitord.background``)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from monitord.background import BackgroundJobs


async def test_a_job_that_raises_hands_its_error_to_the_awaiting_task_once_the_thread_is_gone() -> None:
    def fails() -> None:
        raise ValueError("the reference is too small")

    job = asyncio.create_task(BackgroundJobs().run("failing-job", fails))
    await asyncio.sleep(0)  # the job's thread starts
    # The loop takes the outcome only after the thread has left its except block (as on a
    # busy loop): the error must still be there then.
    for thread in threading.enumerate():
        if thread.name == "failing-job":
            thread.join()
    with pytest.raises(ValueError, match="too small"):
        await asyncio.wait_for(job, 10)


async def test_a_job_s_result_comes_back() -> None:
    assert await BackgroundJobs().run("adds", lambda a, b: a + b, 2, 3) == 5
