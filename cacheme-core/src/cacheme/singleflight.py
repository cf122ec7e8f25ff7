"""Singleflight: requests for a key that is already being fetched wait for that fetch.

A fetch runs in a task of its own, never in a caller's, so it does not
depend on the request that started it: cancelling or timing out a request
only drops that request's own waiter; the fetch goes on for the others and
its key never stays stuck. The outcome, value or exception, reaches every
waiter. A flight leaves the table when the work for its key has ended.

Each event loop has a table of its own: futures belong to one loop, so loops
in other threads never see each other's flights.

``refresh`` and ``invalidate`` win over the fetches that race them. While
either runs for a key, the key is listed in ``changing`` (process-wide, all
threads): a flight made for it then is made stale, because what it reads may
be the value being replaced; a stale flight answers its waiters but writes no
tier. When either ends, the key's flights, in every loop, are marked stale and
detached from their tables: a request that comes after no longer joins a
fetch that may have read the earlier value, it starts one of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import threading
import weakref
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cacheme.entry import Entry

__all__ = [
    "Flight",
    "FlightTable",
    "table",
    "in_flight_count",
    "in_flight_everywhere",
    "settle",
    "changing",
    "begin_change",
    "end_change",
]


class Flight:
    """One key being fetched.

    ``stale`` is set when the key was invalidated or refreshed meanwhile: the
    fetch still answers its waiters but must not write what it fetched.
    ``task`` is the task doing the work for the key now. ``node`` and
    ``load`` are what the engine needs to load the key, if it loads it on
    its own (the node, and its ``load_fn`` or None); they are dropped once
    the load has started. ``fallback`` is an entry that may
    answer the waiters if the load fails (stale_if_error), ``renewal`` marks
    a background reload of a key that was served from a tier. ``epoch`` is
    the module's ``epoch`` when the flight was made. ``lease`` is the mark of
    the key's lease when this process holds it (``cacheme.lease``).
    """

    __slots__ = (
        "waiters",
        "outcome",
        "error",
        "stale",
        "task",
        "node",
        "load",
        "fallback",
        "renewal",
        "epoch",
        "lease",
    )

    def __init__(self, task: asyncio.Task[None] | None = None, node: Any = None, load: Any = None) -> None:
        # Made on the first wait: most flights of a get_all are answered before anyone waits on them.
        self.waiters: list[asyncio.Future[tuple[Any, bool]]] | None = None
        self.outcome: tuple[Any, bool] | None = None  # (value, answered from a cache tier)
        self.error: BaseException | None = None
        self.stale = False
        self.task = task
        self.node = node
        self.load = load
        self.fallback: Entry | None = None
        self.renewal = False
        # What the bus-bound local tiers had seen when the flight began (see ``epoch`` below).
        self.epoch = epoch
        self.lease: bytes | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.error is not None

    def resolve(self, value: Any, from_cache: bool) -> None:
        if self.outcome is not None or self.error is not None:
            return
        self.outcome = outcome = (value, from_cache)
        waiters, self.waiters = self.waiters, None
        if waiters is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(outcome)

    def fail(self, error: BaseException) -> None:
        if self.outcome is not None or self.error is not None:
            return
        self.error = error
        waiters, self.waiters = self.waiters, None
        if waiters is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)

    def offer_fallback(self, entry: Entry) -> None:
        """Keep ``entry`` as the answer to a failed load, unless one that expires later is kept."""
        kept = self.fallback
        if kept is None or (kept.expires_at is not None and (entry.expires_at or math.inf) > kept.expires_at):
            self.fallback = entry

    def wait(self) -> asyncio.Future[tuple[Any, bool]]:
        """A future of the flight's ``(value, from_cache)``, one per caller.

        Cancelling a caller cancels only its own future; the fetch goes on for
        the others. A plain method, not a coroutine: thousands of requests can
        be waiting at once, and each coroutine object would live as long.
        """
        waiter: asyncio.Future[tuple[Any, bool]] = asyncio.get_running_loop().create_future()
        if self.outcome is not None:
            waiter.set_result(self.outcome)
        elif self.error is not None:
            waiter.set_exception(self.error)
        elif self.waiters is None:
            self.waiters = [waiter]
        else:
            self.waiters.append(waiter)
        return waiter


class FlightTable:
    """The flights of one event loop, by full key, and the fetches not started yet.

    ``groups`` gathers the keys that missed in one turn of the loop (per node
    config) so that one task fetches them together: the flights of the group
    and the task that will fetch them. ``writes`` gathers the keys loaded
    within a short window (with each key's fresh entry) and the task that
    writes them into the remote tiers together (``cacheme.writeback``).
    ``detached`` holds the flights taken out of ``flights`` by ``detach``
    (flight -> key) until their work ends.
    """

    __slots__ = ("loop", "flights", "detached", "groups", "writes", "tasks", "_sweep_scheduled", "_on_end")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.flights: dict[str, Flight] = {}
        self.detached: dict[Flight, str] = {}
        self.groups: dict[Any, tuple[dict[str, Flight], asyncio.Task[None]]] = {}
        self.writes: dict[Any, tuple[dict[str, tuple[Flight, Entry]], asyncio.Task[None]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._sweep_scheduled = False
        self._on_end = self._ended  # bound once, not once per task

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in a task of its own (kept referenced until it ends)."""
        task = self.loop.create_task(work)
        self.tasks.add(task)
        # The callback reads no context variable: it runs in one shared context instead of a
        # copy of the caller's made for each task.
        task.add_done_callback(self._on_end, context=_BARE_CONTEXT)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled() and not self._sweep_scheduled:
            self._sweep_scheduled = True
            self.loop.call_soon(self._sweep)

    def _sweep(self) -> None:
        """Fail and drop the flights whose task ended without finishing them.

        A task cancelled from outside (a shutdown handler cancelling every task,
        say) before it ran never ran its own cleanup: its keys would stay in
        flight for good, every later request waiting on them. One pass over the
        table per loop turn in which tasks were cancelled, however many.
        """
        self._sweep_scheduled = False
        stuck = [(key, f) for key, f in self.flights.items() if f.task is not None and f.task.done()]
        stuck += [(key, f) for f, key in self.detached.items() if f.task is not None and f.task.done()]
        self.finish(stuck, asyncio.CancelledError())
        for owner in [owner for owner, (_, task) in self.groups.items() if task.done()]:
            del self.groups[owner]

    def finish(self, flights: Iterable[tuple[str, Flight]], error: BaseException | None = None) -> None:
        """The work for these keys has ended: take them out of the table; fail what got no outcome.

        A fetch cancelled from outside fails its waiters with a RuntimeError: they
        did not ask to be cancelled.
        """
        if isinstance(error, asyncio.CancelledError):
            error = RuntimeError("cacheme: the fetch was cancelled")
        table = self.flights
        detached = self.detached
        for key, flight in flights:
            if table.get(key) is flight:
                del table[key]
            elif detached:
                detached.pop(flight, None)
            if flight.outcome is None and flight.error is None:
                flight.fail(error or RuntimeError(f"cacheme: the fetch of {key!r} ended without a value"))

    def void(self, keys: list[str] | None) -> None:
        """Detach the flights of ``keys`` (every flight for None): another process changed them."""
        for key in list(self.flights) if keys is None else keys:
            flight = self.flights.get(key)
            if flight is not None:
                self.detach(key, flight)

    def detach(self, key: str, flight: Flight) -> None:
        """Mark ``flight`` stale and, if it is still the key's flight here, take it out of ``flights``.

        Requests that come after start a fetch of their own instead of joining
        it. Its work goes on for the waiters it has. A flight whose group has
        not started reading yet stays: what it will read is already current.
        """
        flight.stale = True
        if self.flights.get(key) is not flight:
            return
        for group, _ in self.groups.values():
            if group.get(key) is flight:
                return
        del self.flights[key]
        self.detached[flight] = key


# The context FlightTable._ended runs in (it sets no context variable and reads none).
_BARE_CONTEXT = contextvars.Context()

_tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FlightTable] = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


def table() -> FlightTable:
    """The flight table of the running event loop."""
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last.loop is loop:  # no weak reference made (and collected) per call
        return last
    return _table_of(loop)


def _table_of(loop: asyncio.AbstractEventLoop) -> FlightTable:
    global _last
    found = _tables.get(loop)
    if found is None:
        with _tables_lock:
            found = _tables.setdefault(loop, FlightTable(loop))
    _last = found
    return found


# The table asked for last (each table holds its loop already: this keeps no loop alive).
_last: FlightTable | None = None


def in_flight_count() -> int:
    """How many keys are being fetched (or written back) in the running event loop.

    Fetches detached by ``refresh``/``invalidate`` count until they end.
    """
    found = table()
    return len(found.flights) + len(found.detached)


def in_flight_everywhere() -> int:
    """How many keys are being fetched (or written back) in every event loop of the process."""
    return sum(len(each.flights) + len(each.detached) for each in _every_table())


async def settle(flight: Flight) -> None:
    """Wait until the task working for the flight has ended, write-back included (a loading task
    hands its flight to the task that writes it back: that one is waited for too)."""
    task = flight.task
    while task is not None and not task.done():
        await asyncio.wait({task})
        task = flight.task


# Moves (under cacheme.bus.LOCK) whenever the bus-bound local tiers may have lost an entry:
# an invalidation received from another process, a bus connection lost or subscribed. A
# fetch writes a bus-bound local tier only if its key was not invalidated since the epoch
# it began in (cacheme.bus.may_write).
epoch = 0


def bump_epoch() -> int:
    """Move ``epoch`` and return it; the caller holds cacheme.bus.LOCK."""
    global epoch
    epoch += 1
    return epoch


def void_everywhere(keys: list[str] | None) -> None:
    """Detach the flights of ``keys`` (None: every flight) in every event loop, each in its own
    thread: another process changed them, and what those fetches read may be the earlier value."""
    for each in _every_table():
        with contextlib.suppress(RuntimeError):  # that loop is closed: no request will ask it again
            each.loop.call_soon_threadsafe(each.void, keys)


# The keys whose refresh or invalidate is running, in any thread, with how many
# such calls are running for each; empty when nothing changes. The dict is
# never rebound: the engine reads it without the lock (``key in changing``).
changing: dict[str, int] = {}
_changing_lock = threading.Lock()


def _every_table() -> list[FlightTable]:
    with _tables_lock:
        return list(_tables.values())


def begin_change(key: str) -> Flight | None:
    """A refresh or invalidate of ``key`` starts: list the key in ``changing`` and mark its flights
    stale in every event loop. Pair it with ``end_change(key)`` in a ``finally``.

    Returns the running loop's flight for the key, if any, for the caller to
    ``settle``: a flight that answered already may be writing back the earlier value.
    """
    with _changing_lock:
        changing[key] = changing.get(key, 0) + 1
    for each in _every_table():
        flight = each.flights.get(key)
        if flight is not None:
            flight.stale = True
    return table().flights.get(key)


def end_change(key: str) -> None:
    """The refresh or invalidate of ``key`` has ended: unlist it, and detach its flights in every loop.

    The running loop's flight is detached at once; another loop's through that
    loop (a callback it runs before anything asked of it after this call).
    """
    with _changing_lock:
        count = changing[key] - 1
        if count:
            changing[key] = count
        else:
            del changing[key]
    running = asyncio.get_running_loop()
    for each in _every_table():
        flight = each.flights.get(key)
        if flight is None:
            continue
        if each.loop is running:
            each.detach(key, flight)
            continue
        flight.stale = True
        with contextlib.suppress(RuntimeError):  # that loop is closed: no request will ask it again
            each.loop.call_soon_threadsafe(each.detach, key, flight)
