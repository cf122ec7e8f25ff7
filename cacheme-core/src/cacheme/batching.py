"""Coalescing: calls made in one turn of the event loop go out as one operation.

A ``Coalescer`` belongs to one event loop. ``submit(item)`` queues the item
and returns a future; the first submit of a turn creates the task that sends
the batch. A new task first runs in the loop's next turn, so by then every
item submitted in this turn is queued, and it sends them all together. A
caller that is cancelled or times out only gives up its own future, never
the batch of the others. When the operation fails, every caller still
waiting gets the error (a copy each, whose ``__cause__`` is the original).

With ``max_in_flight``, at most that many batches are sent (or wait to be
sent) at once. While they all wait, new items are queued, and the first batch
to finish sends everything queued as the next batch, in the same task: under
a slow server, batches merge instead of each waiting for a connection of its
own, and the more requests wait, the larger the next batch. While fewer
batches are in flight, nothing changes: one batch per loop turn, sent in the
next turn.
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
    per item, in the same order. ``max_in_flight`` (None: no limit) bounds how
    many batches run at once; items submitted while that many run are sent
    together, by the first of them to finish.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        operation: Callable[[list[ItemT]], Awaitable[Sequence[ResultT]]],
        *,
        max_in_flight: int | None = None,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1 (or None), got {max_in_flight!r}")
        self._loop = loop
        self._operation = operation
        self._max_in_flight = max_in_flight
        self._items: list[ItemT] = []
        self._futures: list[asyncio.Future[ResultT]] = []
        # The task created to send what is queued, until it starts running.
        self._sender: asyncio.Task[None] | None = None
        # Batches sending or due to send: the senders created and not yet ended.
        self._in_flight = 0
        # Every sending task, from its creation to its end (``drain`` waits for them).
        self._running: set[asyncio.Task[None]] = set()

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        future: asyncio.Future[ResultT] = self._loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if self._sender is None and (self._max_in_flight is None or self._in_flight < self._max_in_flight):
            self._start_sender()
        # Otherwise a sender is due already, or the first batch in flight to finish sends the item.
        return future

    def _start_sender(self) -> None:
        self._in_flight += 1
        self._sender = task = self._loop.create_task(self._send_queued())
        self._running.add(task)
        task.add_done_callback(self._sender_ended)

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._sender is task:
            # Cancelled before it ran (``asyncio.run`` cancels every task when its
            # main coroutine ends, say). The callers cancelled with it gave their
            # items up; what the others still wait for (a write-back sent again
            # after a cancel) goes out with a new sender, not an error.
            self._sender = None
            self._in_flight -= 1
            if any(not future.done() for future in self._futures):
                self._start_sender()
            else:
                self._items, self._futures = [], []

    def _fail_queued(self, message: str) -> None:
        futures, self._items, self._futures = self._futures, [], []
        for future in futures:
            if not future.done():
                future.set_exception(RuntimeError(message))

    async def drain(self) -> None:
        """Wait until what is queued is sent and every batch in flight has finished."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _sender_is_due(self) -> bool:
        """Whether a sender task is created and has not run yet."""
        return self._sender is not None

    async def _send_queued(self) -> None:
        """Send what is queued, then what was queued meanwhile, until nothing is left or a sender is due."""
        self._sender = None
        try:
            while self._items:
                items, futures = self._items, self._futures
                self._items, self._futures = [], []
                waiting = [
                    (item, future) for item, future in zip(items, futures, strict=True) if not future.done()
                ]
                if waiting:
                    await self._run([item for item, _ in waiting], [future for _, future in waiting])
                if self._sender_is_due():
                    return  # it takes what was queued meanwhile
        finally:
            self._in_flight -= 1
            if self._items and self._sender is None and self._in_flight == 0:
                # This batch was cancelled, and no other is left in flight to send
                # what was queued behind it: those callers get an error, not a hang.
                self._fail_queued("the batch was cancelled before it was sent")

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
