"""A process of a fleet for tests/integration/test_refresh_ahead.py: its own event loop, [local, Redis].

    python -m tests.integration.refresh_child PREFIX ID

Gets the node once, prints ``value loaded_at`` of the entry its local tier
then holds, and exits without closing anything: a background reload it
started (refresh_after 0.2 s) is cut off by the exit.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta

import cacheme


class Shared(cacheme.Node):
    id: int

    def key(self) -> str:
        return f"shared:{self.id}"

    async def load(self) -> str:
        await asyncio.sleep(0.05)
        return f"loaded by process {os.getpid()}"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [
            cacheme.Cache("local", timedelta(seconds=30)),
            cacheme.Cache("redis", timedelta(seconds=30)),
        ]
        refresh_after = timedelta(seconds=0.2)


async def main(prefix: str, node_id: int) -> None:
    await cacheme.register_storage("local", cacheme.Storage("local://lru", size=100))
    await cacheme.register_storage("redis", cacheme.Storage("redis://127.0.0.1:6379/0"))
    cacheme.set_prefix(prefix)
    node = Shared(id=node_id)
    value = await cacheme.get(node)
    local = cacheme.registered_storages()["local"]
    assert isinstance(local, cacheme.LocalStorage)
    print(value, repr(local.get_sync(node.full_key()).loaded_at))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
