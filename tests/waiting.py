"""Waiting for the engine's background work in tests."""

from __future__ import annotations

import asyncio

from cacheme import singleflight


async def flights_done(seconds: float = 5.0) -> bool:
    """Wait (at most ``seconds``) until no load, reload or write-back is in flight in this event loop.

    Callers get their value before the flight's write-back ends: wait for it
    before reading the tiers. Returns whether it ended in time.
    """
    for _ in range(int(seconds / 0.01)):
        if singleflight.in_flight_count() == 0:
            return True
        await asyncio.sleep(0.01)
    return singleflight.in_flight_count() == 0
