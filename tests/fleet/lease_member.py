"""One process of a fleet sharing leases (``Meta.lease``), for tests/fleet/test_leases.py.

    python -m tests.fleet.lease_member SPEC_JSON

Its own event loop, a chain [local, shared] (or [shared] with ``local: false``) of one node
class, ``Item``, whose ``Meta.lease`` is ``lease_seconds``. The shared tier holds the leases.

SPEC (JSON): ``name`` (this member's, in the values it loads), ``prefix`` (cache keys and the
source's keys), ``source`` (the Redis URL of the "database"), ``shared_url`` and
``shared_options`` (the lease tier: ``cluster``; ``health``, the keyword arguments of a
``cacheme.Health``), ``lease_seconds`` (null: no lease), ``load_seconds`` (how long a load
takes), ``local``, ``load_all`` (true: the class has a ``load_all`` of its own, which get_all
calls), ``fail_ids`` (the ids whose loads raise, after their time).

A load counts itself, across processes, with ``INCR {prefix}:loads:{id}`` in the source, prints
``{"event": "loading", "id", "n", "at"}`` (``n``: that counter, ``at``: ``time.time()``),
sleeps ``load_seconds`` and returns ``"{id}:{name}:{n}"``: who loaded the value, and as which
load of the key fleet-wide. ``load_all`` does the same for each node, with one sleep.

Once set up it prints ``{"event": "ready"}`` and runs the commands it reads on stdin, one JSON
object a line, each in a task of its own (so that one may run while another waits):
``{"tag", "op", "at"?, ...}``; ``at``: the ``time.time()`` to start at (a barrier across
processes). Each answers one line ``{"tag", ...}`` (``{"tag", "error"}`` if it raised):

- ``get``: ``ids`` (one ``get`` each, all at once) and ``all`` (one ``get_all`` of those, at
  the same time); with ``timeout``, each ``get`` (and the ``get_all``) is given up after that
  many seconds (``asyncio.wait_for``; its value is then null). Answers ``values``, ``all``,
  ``timed_out`` (how many ``get``), ``started``, ``done``.
- ``cancel``: a ``get`` of ``id`` per entry of ``delays``, each cancelled (``task.cancel``)
  that many seconds after the start unless it ended before. Answers ``cancelled`` (how many)
  and ``values`` (those that ended first).
- ``invalidate``, ``refresh``: of ``id``; ``refresh`` answers its ``value``. Both ``started``,
  ``done``.
- ``stats``: the node class's stats (``as_dict``) and ``in_flight``
  (``singleflight.in_flight_count()`` of this loop); with ``settle``, first wait (at most that
  many seconds) until nothing is in flight.
- ``exit``: answers, then the program ends. So does the end of stdin.

Times are ``time.time()``: the processes share the machine's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import typing
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

import redis.asyncio

import cacheme
from cacheme import singleflight

SPEC: dict[str, Any] = json.loads(sys.argv[1])


def say(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


class Item(cacheme.Node):
    id: int
    source: ClassVar[Any] = None

    def key(self) -> str:
        return f"item:{self.id}"

    async def load(self) -> str:
        (n,) = await count_loads([self.id])
        await asyncio.sleep(SPEC["load_seconds"])
        return loaded(self.id, n)

    class Meta(cacheme.Node.Meta):
        version = "v1"
        lease = None if SPEC["lease_seconds"] is None else timedelta(seconds=SPEC["lease_seconds"])


async def count_loads(ids: list[int]) -> list[int]:
    """Count a load of each of ``ids`` fleet-wide, and say so; raise for those of ``fail_ids``."""
    pipe = Item.source.pipeline(transaction=False)
    for i in ids:
        pipe.incr(f"{SPEC['prefix']}:loads:{i}")
    counted = [int(n) for n in await pipe.execute()]
    for i, n in zip(ids, counted, strict=True):
        say({"event": "loading", "id": i, "n": n, "at": time.time()})
    return counted


def loaded(item_id: int, n: int) -> str:
    if item_id in SPEC.get("fail_ids", ()):
        raise RuntimeError(f"the load of {item_id} failed")
    return f"{item_id}:{SPEC['name']}:{n}"


async def load_all(cls: type[Item], nodes: Sequence[cacheme.Node[Any]]) -> list[str]:
    """The class's own load_all (with ``load_all: true``): the nodes' loads counted, one sleep."""
    ids = [typing.cast(Item, node).id for node in nodes]
    counted = await count_loads(ids)
    await asyncio.sleep(SPEC["load_seconds"])
    return [loaded(i, n) for i, n in zip(ids, counted, strict=True)]


if SPEC.get("load_all"):
    Item.load_all = classmethod(load_all)  # type: ignore[assignment]


async def setup() -> None:
    # Blocking: hundreds of loads at once wait for a connection (redis-py's default pool would fail).
    pool = redis.asyncio.BlockingConnectionPool.from_url(SPEC["source"], max_connections=50, timeout=20)
    Item.source = redis.asyncio.Redis.from_pool(pool)
    options = dict(SPEC["shared_options"])
    health = options.pop("health", None)
    if health is not None:
        options["health"] = cacheme.Health(**health)
    await cacheme.register_storage("shared", cacheme.Storage(SPEC["shared_url"], **options))
    caches = [cacheme.Cache("shared", timedelta(seconds=600))]
    if SPEC.get("local", True):
        await cacheme.register_storage("local", cacheme.Storage("local://tlfu", size=100_000))
        caches.insert(0, cacheme.Cache("local", timedelta(seconds=600)))
    Item.Meta.caches = caches
    cacheme.set_prefix(SPEC["prefix"])


async def get_one(item_id: int, timeout: float | None) -> str | None:
    if timeout is None:
        value: str = await cacheme.get(Item(id=item_id))
        return value
    try:
        return await asyncio.wait_for(cacheme.get(Item(id=item_id)), timeout)
    except asyncio.TimeoutError:
        return None


async def get_all(ids: list[int], timeout: float | None) -> list[str] | None:
    nodes = [Item(id=i) for i in ids]
    if timeout is None:
        values: list[str] = await cacheme.get_all(nodes)
        return values
    try:
        return await asyncio.wait_for(cacheme.get_all(nodes), timeout)
    except asyncio.TimeoutError:
        return None


async def get(command: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    timeout = command.get("timeout")
    values, got_all = await asyncio.gather(
        asyncio.gather(*(get_one(i, timeout) for i in command.get("ids", []))),
        get_all(command.get("all", []), timeout),
    )
    return {
        "values": values,
        "all": got_all,
        "timed_out": sum(1 for value in values if value is None),
        "started": started,
        "done": time.time(),
    }


async def cancel(command: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(cacheme.get(Item(id=command["id"]))) for _ in command["delays"]]
    for task, delay in zip(tasks, command["delays"], strict=True):
        loop.call_later(delay, task.cancel)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [
        repr(outcome)
        for outcome in outcomes
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError)
    ]
    if errors:
        raise AssertionError(f"gets failed: {errors}")
    return {
        "cancelled": sum(1 for outcome in outcomes if isinstance(outcome, asyncio.CancelledError)),
        "values": [outcome for outcome in outcomes if not isinstance(outcome, BaseException)],
    }


async def change(command: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    node = Item(id=command["id"])
    answer: dict[str, Any] = {"started": started}
    if command["op"] == "refresh":
        answer["value"] = await cacheme.refresh(node)
    else:
        await cacheme.invalidate(node)
    answer["done"] = time.time()
    return answer


async def stats(command: dict[str, Any]) -> dict[str, Any]:
    settle = command.get("settle")
    if settle is not None:
        deadline = time.monotonic() + settle
        while singleflight.in_flight_count() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # flights end in their own tasks; nothing to wait on here
    return {"stats": cacheme.stats(Item).as_dict(), "in_flight": singleflight.in_flight_count()}


OPS = {"get": get, "cancel": cancel, "invalidate": change, "refresh": change, "stats": stats}


async def run(command: dict[str, Any]) -> None:
    at = command.get("at")
    if at is not None:
        await asyncio.sleep(max(0.0, at - time.time()))
    try:
        answer = await OPS[command["op"]](command)
    except Exception as error:
        answer = {"error": repr(error)}
    say({"tag": command["tag"], **answer})


def read_stdin(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed: the program is ending
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)


async def main() -> None:
    await setup()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=read_stdin, args=(asyncio.get_running_loop(), lines), daemon=True).start()
    say({"event": "ready"})
    running: set[asyncio.Task[None]] = set()
    while (line := await lines.get()) is not None:
        command: dict[str, Any] = json.loads(line)
        if command["op"] == "exit":
            say({"tag": command["tag"]})
            break
        task = asyncio.create_task(run(command))
        running.add(task)
        task.add_done_callback(running.discard)
    for task in running:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
