"""A pre-forking server in miniature, for tests/fleet/test_bus_faults.py.

    python -m tests.fleet.forked PREFIX

The parent registers [local on the bus, Redis] and reads a key, then forks. The child (its own
event loop) must listen on the bus by itself: subscribed again, its local storage emptied at the
fork, and a message of another process dropping the key. It prints ``child: ...`` lines; the
parent prints ``parent: child exited N``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta

import redis

import cacheme

PREFIX = sys.argv[1]


class Forked(cacheme.Node):
    id: int

    def key(self) -> str:
        return f"forked:{self.id}"

    async def load(self) -> str:
        return f"loaded by {os.getpid()}"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [
            cacheme.Cache("local", timedelta(seconds=60)),
            cacheme.Cache("shared", timedelta(seconds=60)),
        ]


def local() -> cacheme.LocalStorage:
    found = cacheme.registered_storages()["local"]
    assert isinstance(found, cacheme.LocalStorage)
    return found


async def parent() -> None:
    await cacheme.register_storage("shared", cacheme.Storage("redis://127.0.0.1:6379/0"))
    await cacheme.register_storage("local", cacheme.Storage("local://lru", size=100, bus="shared"))
    cacheme.set_prefix(PREFIX)
    await cacheme.get(Forked(id=1))


async def wait_for(condition: str, test: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not test():
        if time.monotonic() > deadline:
            print(f"child: never {condition}", flush=True)
            os._exit(1)
        await asyncio.sleep(0.02)


async def child() -> None:
    key = Forked(id=1).full_key()
    held = local().get_sync(key) is not cacheme.MISSING
    print(f"child: local held the key after the fork: {held}", flush=True)
    await wait_for("subscribed", lambda: cacheme.bus_health("shared").subscribed)
    assert await cacheme.get(Forked(id=1))
    await wait_for("stored the key", lambda: local().get_sync(key) is not cacheme.MISSING)
    with redis.Redis() as client:
        client.publish("cacheme:bus", json.dumps({"v": 1, "from": "another", "keys": [key]}))
    await wait_for("dropped the key", lambda: local().get_sync(key) is cacheme.MISSING)
    print("child: subscribed, stored, dropped", flush=True)


if __name__ == "__main__":
    asyncio.run(parent())
    pid = os.fork()
    if pid == 0:
        asyncio.run(child())
        sys.stdout.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(f"parent: child exited {os.waitstatus_to_exitcode(status)}", flush=True)
