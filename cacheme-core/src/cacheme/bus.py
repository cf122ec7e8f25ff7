"""The invalidation bus: ``invalidate`` and ``refresh`` in one process reach the local tiers of all.

A local storage names the registered storage whose server carries its
invalidations: ``cacheme.Storage("local://tlfu", size=10_000, bus="my-redis")``.
The backend of that storage provides a ``Bus`` (a hook of its plugin,
``cacheme_bus_schemes``): ``publish`` sends a payload to every process
listening, ``listen`` subscribes and delivers payloads until its connection
is lost. The core does the rest, the same for every backend:

- ``announce`` (called by ``invalidate`` and ``refresh`` once the shared tiers
  are changed) sends the key; the keys announced in one loop turn go out as
  one payload. A failed publish is logged and counted, never raised.
- Each process listens in a thread of its own (one event loop for every bus
  of the process), so that no application loop has to be running for
  invalidations to land. A payload from another process drops its keys from
  the local storages bound to that bus, and voids the fetches of those keys
  running in this process (they answer their callers, but write nothing).
- While a bus is not subscribed (before its first subscription, and from the
  moment its connection is lost until it is subscribed again) its local
  storages are emptied and take no writes: they cannot hold anything that was
  invalidated meanwhile. Each loss is counted and logged.

Every change of what the local tiers may hold (a payload received, a loss, a
subscription) moves ``singleflight.epoch``, and the keys a payload names
remember it: a fetch writes a bound local tier only if its key was not
invalidated (and nothing concerned every key) since the fetch began (see
``may_write``), so a value read before an invalidation is never written after it.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from cacheme import singleflight
from cacheme.batching import Coalescer
from cacheme.loops import PerLoop
from cacheme.plugins import bus_class_for

if TYPE_CHECKING:
    from datetime import timedelta

    from cacheme.storage import BaseStorage, LocalStorage

__all__ = ["Bus", "BusHub", "BusSnapshot", "decode", "encode"]

logger = logging.getLogger("cacheme")

# Who sent a payload: a process ignores its own (it changed its local tiers itself).
SENDER = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
PAYLOAD_VERSION = 1
# How long a process waits, at register_storage, for its bus's first subscription.
FIRST_SUBSCRIPTION_TIMEOUT = 5.0
# The wait before subscribing again after a loss: doubles from the first to the last.
RETRY_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class Bus(abc.ABC):
    """What a backend implements to carry invalidations; built with the bus storage: ``Bus(storage)``.

    ``max_payload`` is the most bytes one payload may hold (the core splits
    larger announcements). A payload is JSON text, all ASCII (other characters
    are escaped), so it fits any server's text type.
    """

    max_payload: ClassVar[int] = 64 * 1024

    @abc.abstractmethod
    async def publish(self, payload: bytes) -> None:
        """Send ``payload`` to every process listening on this bus (this one included).

        Runs in the caller's event loop; raises when it cannot be sent.
        """

    @abc.abstractmethod
    async def listen(self, subscribed: Callable[[], None], deliver: Callable[[bytes], None]) -> None:
        """Subscribe; call ``subscribed()`` once the subscription is in place, then ``deliver(payload)``
        for every payload, in order, until the connection is lost: then raise.

        Runs in cacheme's bus thread. It must notice a connection that has
        gone silent (a ping unanswered within a second or two) and raise; it
        is cancelled when the bus is closed.
        """

    async def close(self) -> None:
        """Close the publishing connections of the calling event loop (the default: nothing to close)."""
        return None


@dataclass(frozen=True)
class BusSnapshot:
    """A bus's state and counters, as ``cacheme.bus_health(name)`` returns them."""

    subscribed: bool
    lost_count: int  # connections lost (each emptied the bound local storages)
    received_count: int  # payloads from other processes
    dropped_count: int  # keys dropped from the local storages on their word
    announced_count: int  # keys this process announced
    announce_failures: int  # keys whose announcement failed (logged)


def encode(keys: Sequence[str], max_payload: int) -> list[bytes]:
    """The payloads announcing ``keys``, each within ``max_payload`` bytes.

    A key that does not fit in a payload of its own is announced as
    "everything": the receivers empty their bound storages.
    """
    payloads: list[bytes] = []
    batch: list[str] = []
    size = 0
    overhead = len(_payload([]))
    for key in keys:
        cost = len(json.dumps(key)) + 1
        if overhead + cost > max_payload:
            return [_payload(None)]
        if batch and overhead + size + cost > max_payload:
            payloads.append(_payload(batch))
            batch, size = [], 0
        batch.append(key)
        size += cost
    if batch:
        payloads.append(_payload(batch))
    return payloads


def _payload(keys: list[str] | None) -> bytes:
    body: dict[str, Any] = {"v": PAYLOAD_VERSION, "from": SENDER}
    if keys is None:
        body["all"] = True
    else:
        body["keys"] = keys
    return json.dumps(body, separators=(",", ":")).encode()  # ASCII: \uXXXX escapes


def decode(payload: bytes) -> tuple[str, list[str] | None]:
    """``(sender, keys)`` of a payload; keys ``None`` means every key. Raises ValueError if malformed."""
    body = json.loads(payload)
    if not isinstance(body, dict) or body.get("v") != PAYLOAD_VERSION:
        raise ValueError(f"not a cacheme bus payload of version {PAYLOAD_VERSION}: {payload[:100]!r}")
    sender = str(body.get("from"))
    if body.get("all"):
        return sender, None
    keys = body.get("keys")
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise ValueError(f"a cacheme bus payload without a list of keys: {payload[:100]!r}")
    return sender, keys


# Held while a bound local storage is written, emptied or has keys dropped, and while the
# epoch moves: a write checks the epoch and writes under it, so no write lands after an
# invalidation that came after its read.
LOCK = threading.Lock()
# The epoch of each key's latest invalidation received (at most REMEMBERED keys; the oldest
# are forgotten, and a read older than what was forgotten writes nothing), and of the latest
# event that concerned every key (a loss, a subscription, a payload for every key).
REMEMBERED = 100_000
_invalidated: OrderedDict[str, int] = OrderedDict()
_forgotten_up_to = 0
_every_key_at = 0


def may_write(key: str, read_epoch: int) -> bool:
    """Whether a value read at ``read_epoch`` may still be written for ``key`` (LOCK held)."""
    if read_epoch < _every_key_at or read_epoch < _forgotten_up_to:
        return False
    invalidated = _invalidated.get(key)
    return invalidated is None or invalidated <= read_epoch


def _invalidated_now(keys: list[str] | None) -> None:
    """Record that ``keys`` (None: every key) were invalidated now (LOCK held)."""
    global _forgotten_up_to, _every_key_at
    epoch = singleflight.bump_epoch()
    if keys is None:
        _every_key_at = epoch
        _invalidated.clear()
        return
    for key in keys:
        _invalidated[key] = epoch
        _invalidated.move_to_end(key)
    while len(_invalidated) > REMEMBERED:
        _, forgotten = _invalidated.popitem(last=False)
        _forgotten_up_to = max(_forgotten_up_to, forgotten)


class BusHub:
    """One bus (of one registered storage) and the local storages bound to it."""

    def __init__(self, name: str, bus: Bus, write_timeout: float | None) -> None:
        self.name = name
        self.bus = bus
        self.storages: list[LocalStorage] = []
        self.subscribed = False
        self.write_timeout = write_timeout
        self._first = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost = 0
        self._received = 0
        self._dropped = 0
        self._announced = 0
        self._announce_failures = 0
        self._senders: PerLoop[Coalescer[str, None]] = PerLoop(self._new_sender, _drain, name=f"bus {name!r}")

    # ------------------------------------------------------------ writing the bound storages

    def write(
        self, storage: LocalStorage, key: str, value: Any, ttl: timedelta | None, epoch: int | None
    ) -> None:
        """Write into a bound storage, unless the bus is not subscribed or ``key`` may have been
        invalidated since ``epoch`` (None: the caller read nothing before)."""
        with LOCK:
            if self.subscribed and (epoch is None or may_write(key, epoch)):
                storage.set_sync(key, value, ttl)

    def _empty(self) -> None:
        for storage in self.storages:
            try:
                storage.clear_sync()
            except Exception:
                logger.exception("cacheme: emptying local storage %r for bus %r failed", storage, self.name)

    # ------------------------------------------------------------ announcing

    async def _new_sender(self) -> Coalescer[str, None]:
        return Coalescer(asyncio.get_running_loop(), self._publish)

    async def announce(self, key: str) -> None:
        """Announce ``key`` (with the others of this loop turn); failures are logged and counted."""
        sender = self._senders.current() or await self._senders.get()
        await sender.submit(key)

    async def _publish(self, keys: list[str]) -> list[None]:
        unique = list(dict.fromkeys(keys))
        try:
            for payload in encode(unique, self.bus.max_payload):
                await asyncio.wait_for(self.bus.publish(payload), self.write_timeout)
        except Exception as error:
            self._announce_failures += len(unique)
            logger.warning(
                "cacheme: announcing %d key(s) on bus %r failed: %r; processes listening keep what "
                "their local tiers hold for them until it expires",
                len(unique),
                self.name,
                error,
            )
        else:
            self._announced += len(unique)
        return [None] * len(keys)

    # ------------------------------------------------------------ listening (in the bus thread)

    def _subscribed(self) -> None:
        with LOCK:
            _invalidated_now(None)
            self._empty()
            self.subscribed = True
        self._first.set()
        if self._lost:
            logger.warning("cacheme: bus %r subscribed again; its local storages serve again", self.name)

    def _deliver(self, payload: bytes) -> None:
        try:
            sender, keys = decode(payload)
        except ValueError as error:
            logger.warning("cacheme: bus %r: %s; emptying its local storages", self.name, error)
            sender, keys = "", None
        if sender == SENDER:
            return
        self._received += 1
        with LOCK:
            _invalidated_now(keys)
            if keys is None:
                self._empty()
            else:
                for storage in self.storages:
                    for key in keys:
                        storage.delete_sync(key)
                self._dropped += len(keys)
        singleflight.void_everywhere(keys)

    def _lose(self, error: BaseException) -> None:
        with LOCK:
            was = self.subscribed
            self.subscribed = False
            _invalidated_now(None)
            self._empty()
        if was:
            self._lost += 1
            logger.warning(
                "cacheme: bus %r lost its subscription (%r); its local storages are emptied and take "
                "no writes until it is subscribed again",
                self.name,
                error,
            )

    async def _listen_forever(self) -> None:
        await listen_forever(self.bus, self._subscribed, self._deliver, self._lose, lambda: self.subscribed)

    def snapshot(self) -> BusSnapshot:
        return BusSnapshot(
            subscribed=self.subscribed,
            lost_count=self._lost,
            received_count=self._received,
            dropped_count=self._dropped,
            announced_count=self._announced,
            announce_failures=self._announce_failures,
        )


async def _drain(sender: Coalescer[str, None]) -> None:
    await sender.drain()


async def listen_forever(
    bus: Bus,
    subscribed: Callable[[], None],
    deliver: Callable[[bytes], None],
    lost: Callable[[BaseException], None],
    is_subscribed: Callable[[], bool],
) -> None:
    """Run ``bus.listen`` again and again until cancelled: ``lost(error)`` after each loss, then
    wait (RETRY_DELAYS, back to the first after a subscription that held) and subscribe again."""
    attempt = 0
    while True:
        try:
            await bus.listen(subscribed, deliver)
            error: BaseException = ConnectionError("the bus stopped listening")
        except asyncio.CancelledError:
            raise
        except Exception as caught:
            error = caught
        if is_subscribed():
            attempt = 0
        lost(error)
        await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
        attempt += 1


# ---------------------------------------------------------------- the bus thread


class Listener(Protocol):
    """What the bus thread runs: a hub's ``_listen_forever``, its task kept in ``_task``."""

    _task: asyncio.Task[None] | None

    async def _listen_forever(self) -> None: ...


class _BusThread:
    """A daemon thread running one event loop for every bus of the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="cacheme-bus", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self, hub: Listener) -> None:
        def begin() -> None:
            hub._task = self.loop.create_task(hub._listen_forever())

        self.loop.call_soon_threadsafe(begin)

    def stop(self, hub: Listener) -> None:
        def end() -> None:
            if hub._task is not None:
                hub._task.cancel()

        self.loop.call_soon_threadsafe(end)

    def shutdown(self) -> None:
        """Cancel every listener and stop the loop (at interpreter exit), waiting at most a second."""

        async def cancel_all() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        if not self.loop.is_closed() and self.thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(cancel_all()))
            self.thread.join(1.0)


_thread: _BusThread | None = None
_thread_lock = threading.Lock()


def bus_thread() -> _BusThread:
    global _thread
    with _thread_lock:
        if _thread is None:
            _thread = _BusThread()
            atexit.register(_thread.shutdown)
        return _thread


def _listen_again_after_fork() -> None:
    """In a child made by ``os.fork`` (a pre-forking server): the bus thread did not come along.

    Every bus starts unsubscribed (its storages emptied, as after a loss) and
    listens again from a bus thread of the child's own.
    """
    global LOCK, _thread, _thread_lock
    LOCK = threading.Lock()  # another thread of the parent may have held it at the fork
    _thread_lock = threading.Lock()
    _thread = None
    for hub in list(_hubs.values()):
        hub.subscribed = False
        hub._first = threading.Event()
        hub._task = None
        hub._empty()
        bus_thread().start(hub)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_listen_again_after_fork)


# ---------------------------------------------------------------- binding (called by the registry)

_hubs: dict[int, BusHub] = {}  # by id() of the bus storage


async def bind(local: LocalStorage, local_name: str, bus_name: str, bus_storage: BaseStorage) -> BusHub:
    """Bind ``local`` to the bus of ``bus_storage``: start listening if nobody does yet, and wait
    (at most FIRST_SUBSCRIPTION_TIMEOUT) for the first subscription."""
    hub = _hubs.get(id(bus_storage))
    if hub is None:
        bus = bus_class_for(bus_storage)(bus_storage)
        hub = _hubs[id(bus_storage)] = BusHub(bus_name, bus, bus_storage.health.write_timeout)
        hub.storages.append(local)
        bus_thread().start(hub)
    elif local not in hub.storages:
        with LOCK:
            if hub.subscribed:
                local.clear_sync()
            hub.storages.append(local)
    local.bus_hub = hub
    subscribed = await asyncio.to_thread(hub._first.wait, FIRST_SUBSCRIPTION_TIMEOUT)
    if not subscribed:
        logger.warning(
            "cacheme: bus %r is not subscribed after %.0f s; local storage %r serves nothing until it is",
            bus_name,
            FIRST_SUBSCRIPTION_TIMEOUT,
            local_name,
        )
    return hub


async def unbind(local: LocalStorage) -> None:
    """Unbind ``local`` from its bus; the bus stops listening when no storage is bound to it."""
    hub = local.bus_hub
    if hub is None:
        return
    local.bus_hub = None
    with LOCK:
        if local in hub.storages:
            hub.storages.remove(local)
    if not hub.storages:
        for key, found in list(_hubs.items()):
            if found is hub:
                del _hubs[key]
        bus_thread().stop(hub)
        await hub._senders.close()
        try:
            await hub.bus.close()
        except Exception:
            logger.exception("cacheme: closing bus %r failed", hub.name)


def hub_named(name: str) -> BusHub | None:
    for hub in _hubs.values():
        if hub.name == name:
            return hub
    return None
