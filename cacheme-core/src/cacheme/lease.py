"""Leases: one process of a fleet loads a missing key while the others wait for its write.

Opt-in per node: ``Meta.lease = timedelta(seconds=10)``, the longest one load
may hold the key. The node's lease tier is the first remote tier of its chain
whose backend offers leases (a hook of its plugin, ``cacheme_lease_schemes``,
naming a ``Leases``). When a key misses every tier, the process (one request
per key per process: singleflight is in front) asks the lease tier for the
key's lease, and the tier answers, atomically:

- with the value, written by another process meanwhile: a hit;
- granted: the process loads the key and writes every tier, the lease tier
  only if its lease still stands there (a fenced write), then sends a notice
  of the key on the backend's channel; a failed load gives the lease back
  (and sends the notice);
- held by another process, with its time left: the process waits for a
  notice of the key, at most that time, and asks again. The lease of a
  holder that died expires; one of the waiters then takes it.

The lease lives where the value will: the key holds a *mark*, ``MARK`` and a
token of 16 random bytes, expiring with the lease. ``invalidate`` (a delete)
and ``refresh`` (a write) remove it, so the holder's fenced write then writes
nothing, and neither can a holder whose lease expired and was taken by
another (the token is the fence). Readers take a mark for a miss. A lease
tier that fails, times out or has its circuit open grants nothing: each
process loads by itself (fail-open), counted in the node's stats.

Notices travel as the invalidation bus's payloads do (``cacheme.bus.encode``),
on the backend's channel of their own, received in cacheme's bus thread.
While that subscription is down, waiters ask again at growing intervals
(``POLL_DELAYS``) instead of waiting for a notice.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from cacheme import bus
from cacheme.batching import Coalescer
from cacheme.chain import guarded
from cacheme.entry import LEASE_MARK
from cacheme.loops import PerLoop

if TYPE_CHECKING:
    from cacheme.config import NodeConfig
    from cacheme.storage import BaseStorage

__all__ = ["MARK", "LeaseHub", "Leases", "Taken", "Ticket", "hub_for", "new_mark"]

logger = logging.getLogger("cacheme")

# What a key holds while leased: MARK + 16 random bytes. The entry header's magic with
# version 0, which no entry has: a reader of any version takes it for a miss.
MARK = LEASE_MARK
# How long a waiter waits between asks while the notices' subscription is down.
POLL_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def new_mark() -> bytes:
    return MARK + secrets.token_bytes(16)


def is_mark(raw: bytes) -> bool:
    return raw.startswith(MARK)


class Leases(bus.Bus):
    """What a backend implements to hold leases; built with the lease storage: ``Leases(storage)``.

    ``publish`` and ``listen`` (a ``cacheme.bus.Bus``'s) carry the notices,
    on a channel other than the invalidation bus's. Each method runs in the
    caller's event loop, under the storage's deadlines and circuit breaker,
    and raises when the server cannot be reached.
    """

    @abc.abstractmethod
    async def acquire(self, marks: Mapping[str, bytes], ttl_ms: int) -> list[bytes | int]:
        """For each key of ``marks``, in order, atomically on the server: if the key is absent, write
        its mark with an expiry of ``ttl_ms`` and answer 0 (granted); if it holds a mark (``MARK``
        and a token), answer the milliseconds that mark has left (at least 1); else answer the
        key's bytes (its value)."""

    @abc.abstractmethod
    async def write(
        self, values: Mapping[str, bytes], marks: Mapping[str, bytes], ttls: Mapping[str, int | None]
    ) -> int:
        """For each key of ``values``: write its value (expiring in ``ttls[key]`` milliseconds; None:
        never) only if the key still holds its mark from ``marks``, atomically. Answer how many
        were written."""

    @abc.abstractmethod
    async def release(self, marks: Mapping[str, bytes]) -> None:
        """Delete each key of ``marks`` that still holds its mark, atomically."""


class Ticket:
    """A wait for a notice of one key, registered before its lease was asked for (so that a notice
    sent between the answer and the wait is not missed), and the seconds the lease had left."""

    __slots__ = ("future", "key", "loop", "seconds")

    def __init__(self, key: str, loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.seconds = 0.0


class Taken(NamedTuple):
    """What asking for the leases of some keys gave."""

    found: dict[str, bytes]  # keys written by another process meanwhile, and their bytes
    granted: dict[str, bytes]  # keys whose lease this process holds now, and their marks
    held: dict[str, Ticket]  # keys another process holds: the wait for each one's notice
    # Keys to load without a lease: the lease tier failed (fail-open); the marks asked for, which
    # the tier may have written all the same (a request past its deadline still runs there).
    unleased: dict[str, bytes]


class LeaseHub:
    """The leases of one storage: asking for them, and the notices that end the waits.

    Its notices' subscription is kept in cacheme's bus thread from the first use on.
    """

    def __init__(self, name: str, leases: Leases, storage: BaseStorage) -> None:
        self.name = name
        self.leases = leases
        self.storage = storage
        self.subscribed = False
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._lock = threading.Lock()
        # The futures waiting for a notice, by key, each with its loop.
        self._waiting: dict[str, list[Ticket]] = {}
        self._senders: PerLoop[Coalescer[str, None]] = PerLoop(
            self._new_sender, _drain, name=f"lease notices of {name!r}"
        )
        # The keys asked for again after a wait, and the fenced writes, per node config: one
        # request per loop turn each.
        self._askers: PerLoop[dict[Any, Coalescer[str, Taken]]] = PerLoop(
            _new_batchers, _drain_batchers, name=f"lease requests of {name!r}"
        )
        self._writers: PerLoop[dict[Any, Coalescer[tuple[str, bytes, bytes, int | None], None]]] = PerLoop(
            _new_batchers, _drain_batchers, name=f"fenced writes of {name!r}"
        )
        self._lost = 0

    def start(self) -> None:
        """Subscribe to the notices (in the bus thread), once."""
        with self._lock:
            if self._started:
                return
            self._started = True
        bus.bus_thread().start(self)

    # ------------------------------------------------------------ asking

    async def take(self, config: NodeConfig, keys: list[str]) -> Taken:
        """Ask for the leases of ``keys`` (one request); a failed or skipped one leases none of them."""
        assert config.lease_tier is not None
        marks = {key: new_mark() for key in keys}
        ttl_ms = config.lease_ms
        tickets = self._expect(keys)
        try:
            answers = await guarded(
                config, config.lease_tier, "lease", len(keys), lambda: self.leases.acquire(marks, ttl_ms)
            )
        except BaseException:
            self._forget(tickets)
            raise
        taken = Taken({}, {}, {}, {})
        if answers is None:
            config.metrics._lease_fail_open += len(keys)
            taken.unleased.update(marks)
            self._forget(tickets)
            return taken
        for ticket, answer in zip(tickets, answers, strict=True):
            key = ticket.key
            if isinstance(answer, bytes):
                if is_mark(answer):  # a backend that answers a mark as a value: it is held
                    ticket.seconds = ttl_ms / 1000
                    taken.held[key] = ticket
                else:
                    taken.found[key] = answer
            elif answer == 0:
                taken.granted[key] = marks[key]
            else:
                ticket.seconds = answer / 1000
                taken.held[key] = ticket
        if len(taken.held) < len(tickets):
            self._forget([ticket for ticket in tickets if ticket.key not in taken.held])
        config.metrics._leases += len(taken.granted)
        return taken

    async def turn(self, config: NodeConfig, ticket: Ticket) -> Taken:
        """Wait until another process's lease of the ticket's key ends (its notice, or its time is
        up), and ask again, as long as the key is held: then the value written, the lease granted,
        or no lease to be had (the tier failed)."""
        config.metrics._lease_waits += 1
        polls = 0
        while True:
            if self.subscribed:
                timeout = ticket.seconds + 0.01
            else:  # no notice can come: ask again at growing intervals
                timeout = min(ticket.seconds, POLL_DELAYS[min(polls, len(POLL_DELAYS) - 1)])
                polls += 1
            await self._wait(ticket, timeout)
            taken = await self._ask_again(config, ticket.key)
            if ticket.key not in taken.held:
                return taken
            ticket = taken.held[ticket.key]

    async def _ask_again(self, config: NodeConfig, key: str) -> Taken:
        """``take(config, [key])``, sent with the other keys of ``config`` asked again in this loop
        turn: a notice of many keys wakes many waiters at once, and they ask in one request."""
        askers = self._askers.current() or await self._askers.get()
        asker = askers.get(config)
        if asker is None:
            take_each = functools.partial(self._take_each, config)
            asker = askers[config] = Coalescer(asyncio.get_running_loop(), take_each)
        return await asker.submit(key)

    async def _take_each(self, config: NodeConfig, keys: list[str]) -> list[Taken]:
        """``take`` for ``keys`` together, its answer split by key (in the order of ``keys``)."""
        taken = await self.take(config, list(dict.fromkeys(keys)))
        return [_one_of(taken, key) for key in keys]

    async def write(
        self, config: NodeConfig, values: Mapping[str, bytes], marks: Mapping[str, bytes], ttl_ms: int | None
    ) -> None:
        """Write ``values`` where their marks still stand (fenced), with the other fenced writes of
        ``config`` in this loop turn: one request. Failures are counted, never raised."""
        writers = self._writers.current() or await self._writers.get()
        writer = writers.get(config)
        if writer is None:
            write_each = functools.partial(self._write_each, config)
            writer = writers[config] = Coalescer(asyncio.get_running_loop(), write_each)
        if len(values) == 1:
            ((key, value),) = values.items()
            await writer.submit((key, value, marks[key], ttl_ms))
        else:
            await asyncio.gather(
                *[writer.submit((key, value, marks[key], ttl_ms)) for key, value in values.items()]
            )

    async def _write_each(
        self, config: NodeConfig, items: list[tuple[str, bytes, bytes, int | None]]
    ) -> list[None]:
        assert config.lease_tier is not None
        values = {key: value for key, value, _, _ in items}
        marks = {key: mark for key, _, mark, _ in items}
        ttls = {key: ttl for key, _, _, ttl in items}
        written = await guarded(
            config, config.lease_tier, "write", len(values), lambda: self.leases.write(values, marks, ttls)
        )
        if written is not None:
            config.metrics._lease_fenced += len(values) - written
        return [None] * len(items)

    async def give_back(self, config: NodeConfig, marks: Mapping[str, bytes]) -> None:
        """Release leases whose load failed, and tell the waiters (failures counted, never raised)."""
        if not marks:
            return
        assert config.lease_tier is not None
        await guarded(config, config.lease_tier, "lease", len(marks), lambda: self.leases.release(marks))
        await self.notify(list(marks))

    # ------------------------------------------------------------ notices

    def _expect(self, keys: list[str]) -> list[Ticket]:
        """A ticket per key, registered for its notices from now on."""
        loop = asyncio.get_running_loop()
        tickets = [Ticket(key, loop) for key in keys]
        with self._lock:
            for ticket in tickets:
                self._waiting.setdefault(ticket.key, []).append(ticket)
        return tickets

    def _forget(self, tickets: list[Ticket]) -> None:
        with self._lock:
            for ticket in tickets:
                waiting = self._waiting.get(ticket.key)
                if waiting is not None and ticket in waiting:
                    waiting.remove(ticket)
                    if not waiting:
                        del self._waiting[ticket.key]

    async def _wait(self, ticket: Ticket, timeout: float) -> None:
        """Until a notice of the ticket's key (from any process, this one included) or ``timeout``."""
        try:
            await asyncio.wait_for(ticket.future, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self._forget([ticket])

    def _wake(self, keys: list[str] | None) -> None:
        """End the waits for ``keys`` (None: every wait), in whichever loop each runs."""
        with self._lock:
            if keys is None:
                woken = [entry for entries in self._waiting.values() for entry in entries]
                self._waiting.clear()
            else:
                woken = [entry for key in keys for entry in self._waiting.pop(key, ())]
        for ticket in woken:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                ticket.loop.call_soon_threadsafe(_set_done, ticket.future)

    async def notify(self, keys: list[str]) -> None:
        """Tell every process waiting for ``keys`` that their leases ended (this loop turn's
        notices go out as one payload); a failed publish is logged, never raised."""
        self._wake(keys)
        sender = self._senders.current() or await self._senders.get()
        await asyncio.gather(*[sender.submit(key) for key in keys])

    async def _new_sender(self) -> Coalescer[str, None]:
        return Coalescer(asyncio.get_running_loop(), self._publish)

    async def _publish(self, keys: list[str]) -> list[None]:
        unique = list(dict.fromkeys(keys))
        try:
            for payload in bus.encode(unique, self.leases.max_payload):
                await asyncio.wait_for(self.leases.publish(payload), self.storage.health.write_timeout)
        except Exception as error:
            logger.warning(
                "cacheme: the lease notice of %d key(s) on %r failed: %r; their waiters ask again when "
                "the leases' time is up",
                len(unique),
                self.name,
                error,
            )
        return [None] * len(keys)

    # ------------------------------------------------------------ listening (in the bus thread)

    def _subscribed(self) -> None:
        self.subscribed = True
        self._wake(None)  # notices may have been missed while down: everyone asks again
        if self._lost:
            logger.warning("cacheme: the lease notices of %r are subscribed again", self.name)

    def _deliver(self, payload: bytes) -> None:
        try:
            _, keys = bus.decode(payload)
        except ValueError as error:
            logger.warning("cacheme: lease notices of %r: %s; every waiter asks again", self.name, error)
            keys = None
        self._wake(keys)

    def _lose(self, error: BaseException) -> None:
        if self.subscribed:
            self._lost += 1
            logger.warning(
                "cacheme: the lease notices of %r lost their subscription (%r); waiters ask again at "
                "intervals until it is back",
                self.name,
                error,
            )
        self.subscribed = False

    async def _listen_forever(self) -> None:
        await bus.listen_forever(
            self.leases, self._subscribed, self._deliver, self._lose, lambda: self.subscribed
        )

    async def close(self) -> None:
        bus.bus_thread().stop(self)
        await self._senders.close()
        await self._askers.close()
        await self._writers.close()
        try:
            await self.leases.close()
        except Exception:
            logger.exception("cacheme: closing the leases of %r failed", self.name)


def _one_of(taken: Taken, key: str) -> Taken:
    """What ``taken`` says of ``key`` alone."""
    one = Taken({}, {}, {}, {})
    if key in taken.found:
        one.found[key] = taken.found[key]
    elif key in taken.granted:
        one.granted[key] = taken.granted[key]
    elif key in taken.held:
        one.held[key] = taken.held[key]
    else:
        one.unleased[key] = taken.unleased[key]
    return one


async def _new_batchers() -> dict[Any, Any]:
    return {}


async def _drain_batchers(batchers: dict[Any, Coalescer[Any, Any]]) -> None:
    for batcher in batchers.values():
        await batcher.drain()


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _drain(sender: Coalescer[str, None]) -> None:
    await sender.drain()


# ---------------------------------------------------------------- one hub per lease storage

_hubs: dict[int, LeaseHub] = {}  # by id() of the storage
_hubs_lock = threading.Lock()


def hub_for(name: str, storage: BaseStorage, leases_class: Callable[[BaseStorage], Leases]) -> LeaseHub:
    """The lease hub of ``storage`` (registered as ``name``), made and subscribed on first use."""
    with _hubs_lock:
        hub = _hubs.get(id(storage))
        if hub is None or hub.storage is not storage:
            hub = _hubs[id(storage)] = LeaseHub(name, leases_class(storage), storage)
    hub.start()
    return hub


async def drop(storage: BaseStorage) -> None:
    """``storage`` is closed: stop its lease hub, if it has one."""
    with _hubs_lock:
        hub = _hubs.pop(id(storage), None)
    if hub is not None:
        await hub.close()


def _listen_again_after_fork() -> None:
    """In a child made by ``os.fork``: the bus thread did not come along; subscribe again from
    the child's (made by cacheme.bus's own fork handler, which runs first)."""
    global _hubs_lock
    _hubs_lock = threading.Lock()
    for hub in list(_hubs.values()):
        hub.subscribed = False
        hub._task = None
        hub._lock = threading.Lock()
        hub._waiting.clear()
        hub._started = False
        hub.start()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_listen_again_after_fork)
