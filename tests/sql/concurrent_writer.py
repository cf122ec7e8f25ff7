"""One writer process of ``test_deadlock``: ``get_all`` of fresh keys in a given order, round after round.

Run as ``python -m tests.sql.concurrent_writer URL TABLE VERSION ORDER ROUNDS KEYS BARRIER_DIR NAME OTHER``.
Before each round the process leaves a file ``NAME.<round>`` in ``BARRIER_DIR`` and waits for
``OTHER.<round>``, so that both processes write the same keys at the same moment. The last line
it prints is the node class's ``storage_error_count``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import cacheme
from cacheme import singleflight

STORAGE_NAME = "deadlock-sql"
BARRIER_TIMEOUT = 60.0


def node_class(key_version: str) -> Any:
    """The node class both writers cache in ``STORAGE_NAME`` (and the test reads keys of)."""

    class Row(cacheme.Node):
        round: int
        id: int

        def key(self) -> str:
            return f"deadlock:{self.round}:{self.id}"

        async def load(self) -> dict[str, int]:
            return {"round": self.round, "id": self.id}

        class Meta(cacheme.Node.Meta):
            version = key_version
            caches = [cacheme.Cache(storage=STORAGE_NAME, ttl=timedelta(hours=1))]

    return Row


def ordered(ids: list[int], order: str) -> list[int]:
    """``ids`` ascending or descending."""
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
    return sorted(ids, reverse=order == "desc")


async def barrier(directory: Path, name: str, other: str, round_: int) -> None:
    """Announce this process reached ``round_`` and wait (bounded) for the other one."""
    (directory / f"{name}.{round_}").touch()
    mine = directory / f"{other}.{round_}"
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while not mine.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"writer {other} never reached round {round_}")
        await asyncio.sleep(0.001)


async def write_backs_done() -> None:
    """Wait (bounded) until every flight's write-back has ended."""
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while singleflight.in_flight_count():
        if time.monotonic() > deadline:
            raise TimeoutError("write-backs never finished")
        await asyncio.sleep(0.01)


async def main(argv: list[str]) -> int:
    url, table, version, order, rounds, keys, directory, name, other = argv
    await cacheme.register_storage(STORAGE_NAME, cacheme.Storage(url, table=table, sweep_interval=None))
    row = node_class(version)
    try:
        for round_ in range(int(rounds)):
            await barrier(Path(directory), name, other, round_)
            nodes = [row(round=round_, id=i) for i in ordered(list(range(int(keys))), order)]
            await cacheme.get_all(nodes)
        await write_backs_done()
    finally:
        await cacheme.unregister_storage(STORAGE_NAME)
    errors: int = cacheme.stats(row).storage_error_count()
    print(errors)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
