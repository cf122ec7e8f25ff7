"""Coalescing: calls made in one turn of the event loop go out as one operation.

A ``Coalescer`` belongs to one event loop. ``submit(item)`` queues the item
and returns a future; the first submit of a turn creates the task that sends
the batch. A new task first runs in the loop's next turn, so by then every
item submitted in this turn is queued, and it sends them all together. A
caller that is cancelled or times out only gives up its own future, never
the batch of the others. When the operation fails, every caller still
waiting gets the error (a copy each, whose ``__cause__`` is the original).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


def _error_for_one_caller(error: BaseException) -> BaseException:
    # Raising one exception object in thousands of tasks would grow its
    # traceback with every raise; each caller gets its own copy instead.
    try:
        clone = copy.copy(error)
    except Exception:
        return error
    clone.__cause__ = error
    return clone


class Coalescer(Generic[ItemT, ResultT]):
    """Runs the items submitted in one loop turn as one call of ``operation``.

    ``operation`` takes the items in submission order and returns one result
    per item, in the same order.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        operation: Callable[[list[ItemT]], Awaitable[Sequence[ResultT]]],
    ) -> None:
        self._loop = loop
        self._operation = operation
        self._items: list[ItemT] = []
        self._futures: list[asyncio.Future[ResultT]] = []
        self._sender: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        future: asyncio.Future[ResultT] = self._loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if self._sender is None:
            self._sender = task = self._loop.create_task(self._send_queued())
            self._running.add(task)
            task.add_done_callback(self._sender_ended)
        return future

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._sender is task:
            # Cancelled before it ran (a shutdown handler cancelling every task,
            # say): what it was to send gets an error, and the next submit makes
            # a new sender instead of queueing behind this one for good.
            self._sender = None
            futures, self._items, self._futures = self._futures, [], []
            for future in futures:
                if not future.done():
                    future.set_exception(RuntimeError("the batch was cancelled before it was sent"))

    async def drain(self) -> None:
        """Wait until what is queued is sent and every batch in flight has finished."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _send_queued(self) -> None:
        self._sender = None
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        waiting = [(item, future) for item, future in zip(items, futures, strict=True) if not future.done()]
        if waiting:
            await self._run([item for item, _ in waiting], [future for _, future in waiting])

    async def _run(self, items: list[ItemT], futures: list[asyncio.Future[ResultT]]) -> None:
        try:
            results = await self._operation(items)
            if len(results) != len(futures):
                raise RuntimeError(
                    f"batch operation returned {len(results)} results for {len(futures)} items"
                )
        except Exception as error:
            for future in futures:
                if not future.done():
                    future.set_exception(_error_for_one_caller(error))
            return
        except BaseException:
            # The batch itself was cancelled (its loop is shutting down): its
            # callers get an error, not a cancellation they did not ask for.
            for future in futures:
                if not future.done():
                    future.set_exception(RuntimeError("the batch was cancelled before it finished"))
            raise
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)
