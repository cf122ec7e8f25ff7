"""A program that registers a storage, uses it, and ends without closing it (or closing it, on request).

    python -m tests.loops.exit_child URL OPTIONS_JSON [never-close|close|unregister]

Run by test_exit.py in a subprocess of its own. Prints the sum of the values it got.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import timedelta
from typing import Any

import cacheme


class ExitNode(cacheme.Node):
    number: int

    def key(self) -> str:
        return f"exit:{self.number}"

    async def load(self) -> int:
        return self.number + 1

    class Meta(cacheme.Node.Meta):
        caches = [cacheme.Cache(storage="exit", ttl=timedelta(minutes=5))]


async def main(url: str, options: dict[str, Any], ending: str) -> None:
    storage = cacheme.Storage(url, **options)
    await cacheme.register_storage("exit", storage)
    values = await asyncio.gather(*(cacheme.get(ExitNode(number=i % 50)) for i in range(200)))
    values += await cacheme.get_all([ExitNode(number=i) for i in range(100)])
    print(sum(values), flush=True)
    if ending in ("close", "unregister"):
        # A program that closes its storage lets the write-backs to it finish first (they run after the
        # callers have their values). Closing under them loses them, and with PyMongo whose I/O tasks
        # are then cancelled at exit, can hold the exit up (see cacheme-mongo's README).
        for _ in range(500):
            if not cacheme.singleflight.in_flight_count():
                break
            await asyncio.sleep(0.01)
    if ending == "close":
        await storage.close()
    elif ending == "unregister":
        await cacheme.unregister_storage("exit")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]))
