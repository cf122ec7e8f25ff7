"""Writing what a fetch loaded into the remote tiers, and ending the leases those writes fence.

A fresh load's write-back waits ``WRITE_WINDOW`` for the loads that end
after it, and all of them go out together: one batch per tier, by the task
of the first (``write_back``). The flights stay in the loop's table until
the write has ended; their callers have their values already. Under
``Meta.lease`` the keys written are announced to the processes waiting for
them, and leases whose key was not written are given back (``end_leases``).
"""

from __future__ import annotations

import asyncio
import contextlib
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from cacheme import singleflight
from cacheme.chain import uncancel_current_task, write_remotes
from cacheme.entry import Entry

if TYPE_CHECKING:
    from cacheme.config import NodeConfig

__all__ = ["WRITE_WINDOW", "end_leases", "give_back_cancelled", "write_back"]


# How long the first write-back of a node class waits for others to join its batch (seconds):
# loads end a few at a time, and a batch per loop turn would be a write command per turn.
WRITE_WINDOW = 0.002


async def write_back(
    table: singleflight.FlightTable, config: NodeConfig, key: str, flight: singleflight.Flight, entry: Entry
) -> bool:
    """Write ``key``'s fresh ``entry`` into the remote tiers together with the other keys loaded
    within ``WRITE_WINDOW`` of it: one batch per tier, not a deadline and a batch each.

    The first of those loads writes the batch once the window has passed;
    each other one hands its flight to it and returns. Its callers have their
    value already, and requests for the key meanwhile are answered from the
    flight. A cancel meanwhile (``asyncio.run`` cancels every task when its
    main coroutine ends) does not give the write-back up: see ``write_remotes``.
    Returns whether the flight was handed to another task (which finishes it).
    """
    pending = table.writes.get(config)
    if pending is not None:
        batch, flight.task = pending
        batch[key] = (flight, entry)
        return True
    batch = {key: (flight, entry)}
    writer = typing.cast("asyncio.Task[None]", asyncio.current_task())
    table.writes[config] = (batch, writer)
    try:
        await asyncio.sleep(WRITE_WINDOW)
    except asyncio.CancelledError:
        uncancel_current_task()
    finally:
        del table.writes[config]
    await _write_group(table, config, batch)  # this flight's too
    return False


async def _write_group(
    table: singleflight.FlightTable, config: NodeConfig, batch: dict[str, tuple[singleflight.Flight, Entry]]
) -> None:
    """Write the entries of ``batch`` into the remote tiers, end their leases, finish their flights."""
    error: BaseException | None = None
    entries = {key: entry for key, (_, entry) in batch.items()}
    marks = {key: flight.lease for key, (flight, _) in batch.items() if flight.lease is not None}
    try:
        sent = await write_remotes(config, config.tiers, entries, marks=marks or None)
        if marks:
            await end_leases(config, marks, sent)
    except BaseException as caught:
        error = caught
        if marks and isinstance(caught, asyncio.CancelledError):
            await give_back_cancelled(config, marks)
        if not isinstance(caught, Exception):
            raise
    finally:
        table.finish(((key, flight) for key, (flight, _) in batch.items()), error)


async def end_leases(config: NodeConfig, marks: Mapping[str, bytes], written: Iterable[str]) -> None:
    """The loads under ``marks`` are over: notify the waiters of the keys ``written`` into the lease
    tier, give the other leases back (and notify their waiters too)."""
    hub = config.lease
    assert hub is not None
    done = [key for key in written if key in marks]
    if done:
        await hub.notify(done)
    if len(done) < len(marks):
        await hub.give_back(config, {key: mark for key, mark in marks.items() if key not in done})


async def give_back_cancelled(config: NodeConfig, marks: Mapping[str, bytes]) -> None:
    """The task holding ``marks`` is cancelled (its loop shuts down, say): give the leases back
    before the cancel goes on, so that the other processes need not wait them out. Bounded by the
    lease tier's deadline; a mark already replaced by a value stays so (the release is fenced)."""
    uncancel_current_task()
    with contextlib.suppress(BaseException):
        await end_leases(config, marks, ())
