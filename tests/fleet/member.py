"""One process of a fleet, for tests/fleet/: its own event loop, [local (on the bus), shared].

    python -m tests.fleet.member SPEC_JSON

SPEC (JSON): ``shared_url``, ``shared_options`` (its ``health``: the keywords of a
``cacheme.Health``), ``bus`` (true: the local tier listens on the shared storage's bus),
``prefix`` (cache keys), ``source`` (the Redis URL of the "database": a node's value is the
integer at ``{prefix}:source:{id}`` there, read by ``load``), ``role`` and its arguments:

- ``reader``: get every node of ``ids`` once (warm), print ``ready``, then get them in a loop
  for ``seconds``, one get every ``interval``; print one JSON line: the reads as
  ``[started_at, id, version]``, and the bus's counters.
- ``writer``: print ``ready``; for each of ``updates`` rounds: for each id, bump the source
  and ``invalidate`` the node (``refresh`` it with ``refresh: true``); record
  ``[id, version, returned_at]``; print one JSON line.
- ``burst``: print ``ready``, then invalidate the nodes of ``ids`` all at once (one loop
  turn); print one JSON line with how long it took.
- ``holder``: get every node of ``ids``, print ``ready``, wait until the bus dropped
  ``len(ids)`` keys (or ``seconds``); print one JSON line: the counters and how many of
  the keys its local tier still holds.

Times are ``time.time()``: the processes share the machine's clock. Nothing is closed at
the end (the program must exit by itself).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import typing
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

import redis.asyncio

import cacheme

SPEC: dict[str, Any] = json.loads(sys.argv[1])


class Item(cacheme.Node):
    id: int
    source: ClassVar[Any] = None

    def key(self) -> str:
        return f"item:{self.id}"

    async def load(self) -> int:
        raw = await Item.source.get(f"{SPEC['prefix']}:source:{self.id}")
        return int(raw or 0)

    @classmethod
    async def load_all(cls, nodes: Sequence[cacheme.Node[Any]]) -> list[int]:
        ids = [typing.cast(Item, node).id for node in nodes]
        raws = await Item.source.mget([f"{SPEC['prefix']}:source:{i}" for i in ids])
        return [int(raw or 0) for raw in raws]

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [
            cacheme.Cache("local", timedelta(seconds=600)),
            cacheme.Cache("shared", timedelta(seconds=600)),
        ]


def say(line: str) -> None:
    print(line, flush=True)


async def setup() -> cacheme.LocalStorage:
    Item.source = redis.asyncio.Redis.from_url(SPEC["source"])
    options = dict(SPEC["shared_options"])
    if "health" in options:  # the keywords of a cacheme.Health
        options["health"] = cacheme.Health(**options["health"])
    await cacheme.register_storage("shared", cacheme.Storage(SPEC["shared_url"], **options))
    local = cacheme.Storage("local://tlfu", size=100_000, bus="shared" if SPEC["bus"] else None)
    assert isinstance(local, cacheme.LocalStorage)
    await cacheme.register_storage("local", local)
    cacheme.set_prefix(SPEC["prefix"])
    return local


def counters() -> dict[str, Any]:
    if not SPEC["bus"]:
        return {}
    return vars(cacheme.bus_health("shared"))


async def reader() -> None:
    nodes = [Item(id=i) for i in SPEC["ids"]]
    await cacheme.get_all(nodes)
    say("ready")
    reads: list[tuple[float, int, int]] = []
    deadline = time.time() + SPEC["seconds"]
    while time.time() < deadline:
        for node in nodes:
            started = time.time()
            reads.append((started, node.id, await cacheme.get(node)))
        await asyncio.sleep(SPEC["interval"])
    say(json.dumps({"reads": reads, "bus": counters()}))


async def writer() -> None:
    say("ready")
    changes: list[tuple[int, int, float]] = []
    for _ in range(SPEC["updates"]):
        for i in SPEC["ids"]:
            version = await Item.source.incr(f"{SPEC['prefix']}:source:{i}")
            if SPEC.get("refresh"):
                await cacheme.refresh(Item(id=i))  # the new value written everywhere, then announced
            else:
                await cacheme.invalidate(Item(id=i))
            changes.append((i, version, time.time()))
        await asyncio.sleep(SPEC["interval"])
    say(json.dumps({"changes": changes, "bus": counters()}))


async def burst() -> None:
    say("ready")
    started = time.perf_counter()
    await asyncio.gather(*(cacheme.invalidate(Item(id=i)) for i in SPEC["ids"]))
    say(json.dumps({"seconds": time.perf_counter() - started, "bus": counters()}))


async def holder(local: cacheme.LocalStorage) -> None:
    nodes = [Item(id=i) for i in SPEC["ids"]]
    await cacheme.get_all(nodes)
    held = sum(1 for node in nodes if local.get_sync(node.full_key()) is not cacheme.MISSING)
    say(f"ready {held}")
    deadline = time.time() + SPEC["seconds"]
    while time.time() < deadline and counters()["dropped_count"] < len(nodes):  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # the bus thread counts; nothing here to wait on
    left = sum(1 for node in nodes if local.get_sync(node.full_key()) is not cacheme.MISSING)
    say(json.dumps({"left": left, "bus": counters()}))


async def main() -> None:
    local = await setup()
    role = SPEC["role"]
    if role == "reader":
        await reader()
    elif role == "writer":
        await writer()
    elif role == "burst":
        await burst()
    elif role == "holder":
        await holder(local)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    asyncio.run(main())
