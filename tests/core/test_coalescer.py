"""The Coalescer with ``max_in_flight``: what is submitted while every batch waits goes out as the next one.

The operation is a gated one of the tests' own: each batch records its items
and waits until the test opens its gate, so the test decides when a batch
"returns", as a slow server would.
"""

from __future__ import annotations

import asyncio

import pytest

from cacheme.batching import Coalescer


class GatedOperation:
    """Records each batch; a batch returns its items upper-cased once its gate opens ("boom" fails it)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gates: list[asyncio.Event] = []

    async def __call__(self, items: list[str]) -> list[str]:
        gate = asyncio.Event()
        self.batches.append(list(items))
        self.gates.append(gate)
        await gate.wait()
        if "boom" in items:
            raise ValueError("boom")
        return [item.upper() for item in items]


async def turns(count: int) -> None:
    """Let the loop run ``count`` turns."""
    for _ in range(count):
        await asyncio.sleep(0)


def coalescer(operation: GatedOperation, max_in_flight: int | None) -> Coalescer[str, str]:
    return Coalescer(asyncio.get_running_loop(), operation, max_in_flight=max_in_flight)


async def test_below_the_limit_each_turn_is_a_batch_sent_in_the_next_turn() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=3)
    first = [batches.submit("a"), batches.submit("b")]
    await turns(1)
    second = [batches.submit("c")]
    await turns(1)
    assert operation.batches == [["a", "b"], ["c"]]
    for gate in operation.gates:
        gate.set()
    assert await asyncio.gather(*first, *second) == ["A", "B", "C"]


async def test_items_submitted_while_every_batch_waits_are_the_next_batch() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=2)
    a = batches.submit("a")
    await turns(1)
    b = batches.submit("b")
    await turns(1)
    assert operation.batches == [["a"], ["b"]]  # the limit is reached
    queued = []
    for item in ("c", "d", "c", "e"):  # one a turn: without the limit, four batches
        queued.append(batches.submit(item))
        await turns(1)
    assert operation.batches == [["a"], ["b"]]
    operation.gates[1].set()  # the second batch returns first: it sends what was queued
    assert await b == "B"
    await turns(1)
    assert operation.batches == [["a"], ["b"], ["c", "d", "c", "e"]]
    assert not a.done()
    operation.gates[0].set()
    operation.gates[2].set()
    assert await asyncio.gather(a, *queued) == ["A", "C", "D", "C", "E"]
    await batches.drain()
    assert len(operation.batches) == 3
    # With nothing in flight any more, the next submit is a batch of its own at once.
    f = batches.submit("f")
    await turns(1)
    assert operation.batches[-1] == ["f"]
    operation.gates[-1].set()
    assert await f == "F"


async def test_a_caller_cancelled_while_queued_gives_up_only_its_own() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=1)
    a = batches.submit("a")
    await turns(1)
    x, y, z = batches.submit("x"), batches.submit("y"), batches.submit("z")
    y.cancel()
    operation.gates[0].set()
    assert await a == "A"
    await turns(1)
    assert operation.batches[1] == ["x", "z"]
    operation.gates[1].set()
    assert [await x, await z] == ["X", "Z"]
    assert y.cancelled()


async def test_a_failing_batch_fails_only_its_callers() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=1)
    failing = [batches.submit("boom"), batches.submit("a")]
    await turns(1)
    queued = [batches.submit("b"), batches.submit("c")]
    operation.gates[0].set()
    outcomes = await asyncio.gather(*failing, return_exceptions=True)
    assert all(isinstance(outcome, ValueError) for outcome in outcomes)
    await turns(1)
    operation.gates[1].set()
    assert await asyncio.gather(*queued) == ["B", "C"]


async def test_a_batch_cancelled_in_flight_strands_no_one_queued_behind_it() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=1)
    a = batches.submit("a")
    await turns(1)
    queued = batches.submit("q")
    for task in asyncio.all_tasks():  # a shutdown handler cancelling every task
        if task is not asyncio.current_task():
            task.cancel()
    outcomes = await asyncio.wait_for(asyncio.gather(a, queued, return_exceptions=True), 5)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes), outcomes
    # The Coalescer still sends what it is given.
    b = batches.submit("b")
    await turns(1)
    operation.gates[-1].set()
    assert await asyncio.wait_for(b, 5) == "B"


async def test_when_one_of_two_batches_is_cancelled_the_other_sends_the_queue() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=2)
    first = batches.submit("a")
    await turns(1)
    senders = asyncio.all_tasks() - {asyncio.current_task()}
    second = batches.submit("b")
    await turns(1)
    queued = batches.submit("q")
    for task in senders:  # the first batch's task
        task.cancel()
    assert isinstance((await asyncio.gather(first, return_exceptions=True))[0], RuntimeError)
    assert not queued.done()
    operation.gates[1].set()
    assert await second == "B"
    await turns(1)
    assert operation.batches[-1] == ["q"]
    operation.gates[-1].set()
    assert await queued == "Q"


async def test_a_sender_cancelled_before_it_ran_frees_its_place() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=1)

    async def call() -> str:
        return await batches.submit("a")

    caller = asyncio.ensure_future(call())  # cancelled with the sender
    await turns(1)  # it submits; the sender is made, due to run in the next turn
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
    assert (await asyncio.gather(caller, return_exceptions=True))[0].__class__ is asyncio.CancelledError
    await turns(2)
    assert operation.batches == []  # a cancelled caller's item is given up, not sent
    b = batches.submit("b")
    await turns(1)
    assert operation.batches == [["b"]]
    operation.gates[0].set()
    assert await asyncio.wait_for(b, 5) == "B"


async def test_what_callers_still_wait_for_is_sent_when_the_sender_is_cancelled_before_it_ran() -> None:
    """asyncio.run's shutdown cancels every task: a write-back that takes its cancel back and
    submits again, behind the cancelled sender, is sent, not failed."""
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=1)
    waited = batches.submit("a")  # its caller goes on waiting
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
    again = batches.submit("b")  # submitted before the cancelled sender's end is noticed
    await turns(3)  # the sender's cancel, its end noticed, the new sender running
    assert operation.batches == [["a", "b"]]
    operation.gates[0].set()
    assert await asyncio.wait_for(waited, 5) == "A"
    assert await asyncio.wait_for(again, 5) == "B"


async def test_drain_waits_for_what_is_queued_behind_a_full_limit() -> None:
    operation = GatedOperation()
    batches = coalescer(operation, max_in_flight=1)
    a = batches.submit("a")
    await turns(1)
    queued = batches.submit("q")
    drained = asyncio.ensure_future(batches.drain())
    operation.gates[0].set()
    await turns(3)
    assert operation.batches == [["a"], ["q"]]
    assert not drained.done()  # the queued batch is in flight
    operation.gates[1].set()
    await asyncio.wait_for(drained, 5)
    assert queued.result() == "Q" and a.result() == "A"


@pytest.mark.parametrize("limit", [0, -1])
async def test_max_in_flight_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        coalescer(GatedOperation(), max_in_flight=limit)
