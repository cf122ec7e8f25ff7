"""Per-event-loop resources: one connection pool (or client) per event loop, closed with that loop.

Drivers' connections, pools, queues and futures belong to the event loop that
made them: used from another loop they fail ("another operation is in
progress", "attached to a different loop") or worse. A program may run
several loops in turn (``asyncio.run`` twice, a test runner giving every test
a loop of its own) or at once (threads). ``PerLoop`` gives each loop its own
resource, made on first use in that loop, and closes it:

- when the loop shuts down: ``asyncio.run`` and ``asyncio.Runner`` call
  ``loop.shutdown_asyncgens()`` before closing the loop, and every resource
  opened in the loop is closed then, inside the loop, so that a program that
  never closes its storages still exits at once with nothing left behind;
- on ``close()``: the calling loop's resource; the resource of a loop closed
  without ``shutdown_asyncgens()`` is handed to ``abandon`` then (no loop can
  run its close any more).

Every backend keeps its per-loop state through this one class.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

logger = logging.getLogger("cacheme")

T = TypeVar("T")


class _Slot(Generic[T]):
    """What one loop holds: its resource once open (or the task opening it) and its closing guard."""

    __slots__ = ("guard", "loop", "opening", "resource")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.resource: T | None = None
        self.opening: asyncio.Task[T] | None = None
        self.guard: AsyncGenerator[None, None] | None = None


class PerLoop(Generic[T]):
    """One ``T`` per event loop: ``open()`` makes it on first use in a loop, ``close(resource)`` ends it.

    ``current()`` is the sync fast path (the running loop's resource, or None
    before it is open); ``get()`` opens it when needed. Concurrent first uses
    in one loop share one ``open()``; a failed ``open()`` is retried by the
    next use. Thread-safe: loops in several threads each get their own.
    ``abandon(resource)`` (optional, sync, must not raise) releases what it can
    of a resource whose loop was closed before the resource could be closed.
    """

    def __init__(
        self,
        open: Callable[[], Awaitable[T]],
        close: Callable[[T], Awaitable[None]],
        *,
        abandon: Callable[[T], None] | None = None,
        name: str = "resource",
    ) -> None:
        self._open = open
        self._close = close
        self._abandon = abandon
        self._name = name
        self._slots: dict[asyncio.AbstractEventLoop, _Slot[T]] = {}
        self._retired: set[AsyncGenerator[None, None]] = set()  # guards of discarded resources
        self._closing: set[asyncio.Task[None]] = set()  # discarded resources being closed
        # Re-entrant: a guard closed while the lock is held takes it again in its finally.
        self._lock = threading.RLock()

    def current(self) -> T | None:
        """The running loop's resource if it is open, else None (no I/O, no await)."""
        slot = self._slots.get(asyncio.get_running_loop())
        return None if slot is None else slot.resource

    async def get(self) -> T:
        """The running loop's resource, opened first if need be."""
        loop = asyncio.get_running_loop()
        slot = self._slots.get(loop)
        if slot is not None and slot.resource is not None:
            return slot.resource
        with self._lock:
            self._drop_closed_loops()
            slot = self._slots.get(loop)
            if slot is None:
                slot = self._slots[loop] = _Slot(loop)
            if slot.resource is not None:
                return slot.resource
            if slot.opening is None:
                slot.opening = loop.create_task(self._open_in(slot), name=f"cacheme: open {self._name}")
            opening = slot.opening
        # Shielded: a caller cancelled while waiting does not cancel the open others wait for.
        return await asyncio.shield(opening)

    async def _open_in(self, slot: _Slot[T]) -> T:
        try:
            resource = await self._open()
        except BaseException:
            with self._lock:
                slot.opening = None
                if self._slots.get(slot.loop) is slot:
                    del self._slots[slot.loop]
            raise
        slot.resource = resource
        slot.opening = None
        slot.guard = self._guard(slot)
        _start(slot.guard)
        return resource

    async def _guard(self, slot: _Slot[T]) -> AsyncGenerator[None, None]:
        """Parked at its ``yield`` for the life of the loop; its ``finally`` closes the slot's resource.

        An async generator that a loop has iterated is closed by that loop's
        ``shutdown_asyncgens()`` (which ``asyncio.run`` calls before closing the
        loop): that is the loop's only shutdown hook, so the resource is closed
        there, inside the loop. ``close()`` closes the guard the same way.
        """
        try:
            yield
        finally:
            with self._lock:
                if self._slots.get(slot.loop) is slot:
                    del self._slots[slot.loop]
                self._retired.discard(slot.guard)
            resource, slot.resource = slot.resource, None
            if resource is not None:
                if slot.loop.is_closed():
                    self._abandon_quietly(resource)
                else:
                    await self._close_quietly(resource)

    async def _close_quietly(self, resource: T) -> None:
        try:
            await self._close(resource)
        except Exception:
            logger.warning("cacheme: closing %s failed", self._name, exc_info=True)

    def _abandon_quietly(self, resource: T) -> None:
        if self._abandon is not None:
            try:
                self._abandon(resource)
            except Exception:
                logger.debug("cacheme: abandoning %s failed", self._name, exc_info=True)

    def _drop_closed_loops(self) -> None:
        """Forget the slots of loops closed without shutting their async generators down (lock held)."""
        for loop in [loop for loop in self._slots if loop.is_closed()]:
            slot = self._slots.pop(loop)
            guard, slot.guard = slot.guard, None
            if guard is not None:
                _finish_closed(guard)
            elif slot.resource is not None:
                self._abandon_quietly(slot.resource)

    def discard(self, resource: T | None = None, *, close_now: bool = True) -> None:
        """The running loop's resource (``resource``, if given) is broken: the next ``get()`` opens a new one.

        The broken one is closed in the background, or with ``close_now=False``
        when the loop shuts down (for a resource whose close could hang now).
        Nothing happens when the loop holds no resource, or another one than ``resource``.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            slot = self._slots.get(loop)
            if (
                slot is None
                or slot.resource is None
                or (resource is not None and slot.resource is not resource)
            ):
                return
            del self._slots[loop]
            if slot.guard is not None:
                self._retired.add(slot.guard)  # its loop closes it at shutdown (if nothing else did)
            if not close_now:
                return
            broken, slot.resource = slot.resource, None
        closing = loop.create_task(self._close_quietly(broken), name=f"cacheme: close {self._name}")
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close the running loop's resource (one being opened is closed once open).

        Another running loop's resource stays: it is that loop's, in use there,
        and is closed when that loop shuts down. The resources of loops closed
        without shutting down are abandoned. The PerLoop stays usable: the next
        ``get()`` opens a new resource.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            self._drop_closed_loops()
            slot = self._slots.get(loop)
        if slot is None:
            return
        if slot.opening is not None:
            try:
                await asyncio.shield(slot.opening)
            except Exception:
                return  # nothing was opened
        guard, slot.guard = slot.guard, None
        if guard is not None:
            await guard.aclose()

    def __len__(self) -> int:
        """How many loops hold a resource (or are opening one)."""
        return len(self._slots)


def _start(guard: AsyncGenerator[None, None]) -> None:
    """Run the guard to its ``yield`` now: its first step registers it with the running loop.

    Driven by hand rather than awaited, so that no task is needed (a task made
    during a loop's shutdown might never run); the guard does not await before
    its ``yield``, so one step reaches it.
    """
    step = guard.__anext__()
    try:
        step.send(None)
    except StopIteration:
        return
    raise RuntimeError("cacheme: the loop guard awaited before its first yield")


def _finish_closed(guard: AsyncGenerator[None, None]) -> None:
    """Close the guard of a closed loop by hand: its ``finally`` abandons the resource without awaiting.

    Left to the garbage collector, the loop's finalizer would try to schedule
    the close on the closed loop and print an error.
    """
    step = guard.aclose()
    try:
        step.send(None)
    except (StopIteration, RuntimeError):
        return
    step.close()
