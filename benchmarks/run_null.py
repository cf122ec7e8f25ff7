"""Runner for the two floor caches, run with our interpreter (stdlib only): what the trace and batch cost
with a cache that does next to nothing.

Variants:
- ``null``: "dict + in-flight futures". A plain dict of values; on a miss, a key already loading is
  awaited on its in-flight future, else the requesting coroutine registers a future, calls the loader
  inline, stores the value, resolves the future and unregisters it. Not cancellation-safe: a cancelled
  requester cancels its load, and a cancelled waiter cancels the shared future of every other waiter.
- ``null-safe``: "a load in its own task, a future per waiter". The same dict, but a miss starts the load
  in a task of its own (a cancelled requester never cancels it) and every waiting request, the first one
  included, awaits a future of its own that the task resolves when the load ends (or fails). The least an
  asyncio cache with our guarantees (cancellation-safe singleflight) must do.

The batch (``fetch_many(keys)``, one ``get_all`` of 20 keys) works the same way: hits from the dict, keys
in flight awaited, the remaining new keys loaded with one ``harness.load_many`` call (``null``: inline;
``null-safe``: in its own task, one future per waiting request and load), the values returned in order.
No ttl, no serialization, no Redis, no eviction.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import harness

F = TypeVar("F")


def partition(keys: list[int], values: dict[int, int], flights: dict[int, F]) -> tuple[list[int], set[F]]:
    """Of the keys ``values`` lacks: those no flight loads (load them now), and the flights loading
    the others."""
    new: list[int] = []
    waiting: set[F] = set()
    for key in keys:
        if key not in values:
            flight = flights.get(key)
            if flight is None:
                new.append(key)
            else:
                waiting.add(flight)
    return new, waiting


class NullCache:
    """``null``: the loader runs inline in the first requester; the others await its future."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}
        self.flights: dict[int, asyncio.Future[None]] = {}

    async def get(self, key: int) -> int:
        values = self.values
        if key in values:
            return values[key]
        flight = self.flights.get(key)
        if flight is not None:
            await flight
            return values[key]
        flight = self.flights[key] = asyncio.get_running_loop().create_future()
        try:
            value = await harness.load_one(key)
        except BaseException as error:
            del self.flights[key]
            flight.set_exception(error)
            raise
        values[key] = value
        del self.flights[key]
        flight.set_result(None)
        return value

    async def get_many(self, keys: list[int]) -> list[int]:
        values = self.values
        new, waiting = partition(keys, values, self.flights)
        if new:
            flight = asyncio.get_running_loop().create_future()
            for key in new:
                self.flights[key] = flight
            try:
                loaded = await harness.load_many(new)
            except BaseException as error:
                for key in new:
                    del self.flights[key]
                flight.set_exception(error)
                raise
            for key, value in zip(new, loaded, strict=True):
                values[key] = value
                del self.flights[key]
            flight.set_result(None)
        for flight in waiting:
            await flight
        return [values[key] for key in keys]


class Flight:
    """``null-safe``: one load running in its own task and the futures of the requests waiting for it."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []

    def wait(self) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return waiter

    def resolve(self, error: BaseException | None) -> None:
        for waiter in self.waiters:
            if not waiter.done():  # a cancelled waiter's future is done already
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)


class SafeNullCache:
    """``null-safe``: each load in its own task, each waiting request on a future of its own."""

    def __init__(self) -> None:
        self.values: dict[int, int] = {}
        self.flights: dict[int, Flight] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # the event loop keeps only weak references

    def start(self, load: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(load)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def get(self, key: int) -> int:
        values = self.values
        if key in values:
            return values[key]
        flight = self.flights.get(key)
        if flight is None:
            flight = self.flights[key] = Flight()
            self.start(self.load_key(key, flight))
        await flight.wait()
        return values[key]

    async def load_key(self, key: int, flight: Flight) -> None:
        try:
            self.values[key] = await harness.load_one(key)
        except BaseException as error:
            del self.flights[key]
            flight.resolve(error)
            if not isinstance(error, Exception):
                raise
            return
        del self.flights[key]
        flight.resolve(None)

    async def get_many(self, keys: list[int]) -> list[int]:
        values = self.values
        new, waiting = partition(keys, values, self.flights)
        if new:
            flight = Flight()
            for key in new:
                self.flights[key] = flight
            self.start(self.load_keys(new, flight))
            waiting.add(flight)
        for waiter in [flight.wait() for flight in waiting]:
            await waiter
        return [values[key] for key in keys]

    async def load_keys(self, keys: list[int], flight: Flight) -> None:
        try:
            loaded = await harness.load_many(keys)
        except BaseException as error:
            for key in keys:
                del self.flights[key]
            flight.resolve(error)
            if not isinstance(error, Exception):
                raise
            return
        for key, value in zip(keys, loaded, strict=True):
            self.values[key] = value
            del self.flights[key]
        flight.resolve(None)


async def main() -> None:
    args = harness.parse_args(["null", "null-safe"])
    if args.workload not in ("trace", "batch"):
        raise SystemExit("the null caches run the trace and the batch only")
    cache: NullCache | SafeNullCache = NullCache() if args.variant == "null" else SafeNullCache()
    call: Callable[[Any], Awaitable[Any]] = cache.get if args.workload == "trace" else cache.get_many
    jobs = harness.load_jobs(args.keys)
    result: dict[str, Any] = {
        "lib": "null",
        "version": f"Python {platform.python_version()}",
        "unique": harness.unique_keys(jobs),
    }
    result.update(await harness.drain(jobs, call, args.workers))
    harness.emit(result)


if __name__ == "__main__":
    asyncio.run(main())
