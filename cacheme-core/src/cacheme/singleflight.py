"""Singleflight: requests for a key that is already being fetched wait for that fetch.

A fetch runs in a task of its own, so it does not depend on the request
that started it: cancelling or timing out any request never cancels the
fetch nor leaves its key stuck. Its outcome, value or exception, reaches
every waiter. A flight leaves the table when its task ends, success or not.

Each event loop has its own table: futures belong to one loop, so loops in
other threads never see each other's flights.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

__all__ = ["Flight", "table", "launch", "wait", "wait_all", "settle", "in_flight_count"]


class Flight:
    """One key being fetched. ``stale`` is set when the key was invalidated or
    refreshed meanwhile: the fetch still answers its waiters but must not
    write what it fetched into the caches."""

    __slots__ = ("future", "stale", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[tuple[Any, bool]] = loop.create_future()
        self.stale = False
        self.task: asyncio.Task[None] | None = None

    def resolve(self, value: Any, from_cache: bool) -> None:
        if not self.future.done():
            self.future.set_result((value, from_cache))


_tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Flight]] = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()
_running_tasks: set[asyncio.Task[None]] = set()


def table() -> dict[str, Flight]:
    """The flights of the running event loop, by full key."""
    loop = asyncio.get_running_loop()
    flights = _tables.get(loop)
    if flights is None:
        with _tables_lock:
            flights = _tables.setdefault(loop, {})
    return flights


def in_flight_count() -> int:
    """How many keys are being fetched in the running event loop."""
    return len(table())


def _consume_exception(future: asyncio.Future[Any]) -> None:
    # A fetch nobody waits for any more must not log "exception never retrieved".
    if not future.cancelled():
        future.exception()


def launch(
    flights_table: dict[str, Flight],
    keys: Iterable[str],
    work: Callable[[Mapping[str, Flight]], Awaitable[None]],
) -> dict[str, Flight]:
    """Start one task that fetches ``keys``; enter a flight for each in the table.

    ``work`` must resolve each flight; whatever it leaves unresolved gets the
    exception it raised (or a RuntimeError if it raised nothing).
    """
    loop = asyncio.get_running_loop()
    flights: dict[str, Flight] = {}
    for key in keys:
        flight = Flight(loop)
        flight.future.add_done_callback(_consume_exception)
        flights[key] = flight
    flights_table.update(flights)
    task = loop.create_task(_run(flights_table, flights, work))
    for flight in flights.values():
        flight.task = task
    _running_tasks.add(task)
    task.add_done_callback(_running_tasks.discard)
    return flights


async def _run(
    flights_table: dict[str, Flight],
    flights: dict[str, Flight],
    work: Callable[[Mapping[str, Flight]], Awaitable[None]],
) -> None:
    failure: BaseException | None = None
    try:
        await work(flights)
    except BaseException as error:
        failure = error
        if not isinstance(error, Exception):
            raise
    finally:
        for key, flight in flights.items():
            if flights_table.get(key) is flight:
                del flights_table[key]
            future = flight.future
            if not future.done():
                if isinstance(failure, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(failure or RuntimeError(f"cacheme: fetch of {key!r} gave no value"))


async def wait(flight: Flight) -> tuple[Any, bool]:
    """The flight's ``(value, from_cache)``; cancelling the caller leaves the flight alone."""
    future = flight.future
    if future.done():
        return future.result()
    return await asyncio.shield(future)


async def settle(flight: Flight) -> None:
    """Wait until the flight's task has ended, write-back included."""
    task = flight.task
    if task is not None and not task.done():
        await asyncio.wait({task})


async def wait_all(flights: Iterable[Flight]) -> None:
    """Wait until every flight is done; cancelling the caller leaves them alone."""
    pending = {flight.future for flight in flights if not flight.future.done()}
    if pending:
        await asyncio.wait(pending)
