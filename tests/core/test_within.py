"""cacheme.health.within: a deadline on one storage operation, in a task of its own or in the caller's."""

from __future__ import annotations

import asyncio
import time

import pytest

from cacheme.health import within


async def operation(seconds: float, ran_in: list[asyncio.Task[object] | None]) -> str:
    ran_in.append(asyncio.current_task())
    await asyncio.sleep(seconds)
    return "answer"


@pytest.mark.parametrize("at_once", [False, True])
async def test_an_answer_in_time_is_returned(at_once: bool) -> None:
    ran_in: list[asyncio.Task[object] | None] = []
    assert await within(1.0, operation(0.01, ran_in), at_once) == "answer"
    # In the caller's task (at_once), or in one of its own.
    assert (ran_in[0] is asyncio.current_task()) is at_once
    await asyncio.sleep(0.02)  # no cancel left pending for this task


@pytest.mark.parametrize("at_once", [False, True])
async def test_no_answer_in_time_is_a_timeout_and_the_caller_goes_on(at_once: bool) -> None:
    started = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"no answer within 0\.05s"):
        await within(0.05, operation(10, []), at_once)
    assert time.perf_counter() - started < 1.0
    await asyncio.sleep(0.02)  # the deadline's cancel was taken back: this task is not cancelled
    task = asyncio.current_task()
    assert task is not None
    assert getattr(task, "cancelling", lambda: 0)() == 0  # (Python 3.11+ counts cancels)


@pytest.mark.parametrize("at_once", [False, True])
async def test_a_cancelled_caller_is_cancelled_not_timed_out(at_once: bool) -> None:
    caller = asyncio.ensure_future(within(5.0, operation(10, []), at_once))
    await asyncio.sleep(0.02)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_many_deadlines_at_once_in_one_task_each() -> None:
    async def one(number: int) -> str:
        seconds = 0.001 if number % 2 else 10
        try:
            return await within(1.0, operation(seconds, []), True)
        except TimeoutError:
            return "timeout"

    results = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(1_000))), 10)
    assert results == ["answer" if n % 2 else "timeout" for n in range(1_000)]
