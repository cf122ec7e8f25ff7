"""Tiers read left to right, back-filled, expiring, invalidated and refreshed."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import cacheme
from cacheme.entry import Entry


def chain_node(caches: list[cacheme.Cache], version: str = "v1") -> Any:
    class Chained(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"chained:{self.id}"

        async def load(self) -> dict[str, int]:
            Chained.loads += 1  # type: ignore[attr-defined]
            return {"id": self.id, "load": Chained.loads}  # type: ignore[attr-defined]

        class Meta(cacheme.Node.Meta):
            pass

    Chained.Meta.version = version
    Chained.Meta.caches = caches
    Chained.loads = 0  # type: ignore[attr-defined]
    return Chained


def storage(name: str) -> cacheme.LocalStorage:
    found = cacheme.registered_storages()[name]
    assert isinstance(found, cacheme.LocalStorage)
    return found


async def test_a_miss_loads_and_writes_every_tier(local: str, local2: str) -> None:
    node_class = chain_node([cacheme.Cache(local, None), cacheme.Cache(local2, None)])
    node = node_class(id=1)
    assert await cacheme.get(node) == {"id": 1, "load": 1}
    key = node.full_key()
    assert key == "cacheme:chained:1:v1"
    assert storage(local).get_sync(key).value == {"id": 1, "load": 1}
    assert storage(local2).get_sync(key).value == {"id": 1, "load": 1}


async def test_a_hit_in_the_second_tier_back_fills_the_first(local: str, local2: str) -> None:
    node_class = chain_node([cacheme.Cache(local, None), cacheme.Cache(local2, None)])
    node = node_class(id=2)
    storage(local2).set_sync(node.full_key(), Entry("from-second", time.time(), 0.0, None), None)
    assert await cacheme.get(node) == "from-second"
    assert storage(local).get_sync(node.full_key()).value == "from-second"
    assert node_class.loads == 0
    # get_all back-fills the same way.
    other = node_class(id=3)
    storage(local2).set_sync(other.full_key(), Entry("second-3", time.time(), 0.0, None), None)
    assert await cacheme.get_all([other, node]) == ["second-3", "from-second"]
    assert storage(local).get_sync(other.full_key()).value == "second-3"
    assert cacheme.stats(node_class).hit_count() == 3


async def test_ttl_expiry_per_tier(local: str, local2: str) -> None:
    node_class = chain_node(
        [
            cacheme.Cache(local, timedelta(milliseconds=100)),
            cacheme.Cache(local2, timedelta(milliseconds=400)),
        ]
    )
    node = node_class(id=4)
    await cacheme.get(node)
    await asyncio.sleep(0.15)
    assert storage(local).get_sync(node.full_key()) is cacheme.MISSING
    assert await cacheme.get(node) == {"id": 4, "load": 1}  # from the second tier, back-filled
    await asyncio.sleep(0.4)
    assert await cacheme.get(node) == {"id": 4, "load": 2}  # both expired: loaded again
    assert node_class.loads == 2


async def test_version_and_prefix_changes_make_new_keys(local: str) -> None:
    first = chain_node([cacheme.Cache(local, None)], version="v1")
    await cacheme.get(first(id=5))
    second = chain_node([cacheme.Cache(local, None)], version="v2")
    assert await cacheme.get(second(id=5)) == {"id": 5, "load": 1}
    assert second.loads == 1
    assert second(id=5).full_key() == "cacheme:chained:5:v2"
    node = first(id=5)
    assert node.full_key() == "cacheme:chained:5:v1"
    cacheme.set_prefix("other")
    try:
        assert node.full_key() == "other:chained:5:v1"
        assert await cacheme.get(node) == {"id": 5, "load": 2}
        assert first.loads == 2
    finally:
        cacheme.set_prefix("cacheme")
    assert await cacheme.get(first(id=5)) == {"id": 5, "load": 1}


async def test_invalidate_removes_from_every_tier(local: str, local2: str) -> None:
    node_class = chain_node([cacheme.Cache(local, None), cacheme.Cache(local2, None)])
    node = node_class(id=6)
    await cacheme.get(node)
    await cacheme.invalidate(node)
    assert storage(local).get_sync(node.full_key()) is cacheme.MISSING
    assert storage(local2).get_sync(node.full_key()) is cacheme.MISSING
    assert await cacheme.get(node) == {"id": 6, "load": 2}


async def test_refresh_loads_and_overwrites_every_tier(local: str, local2: str) -> None:
    node_class = chain_node([cacheme.Cache(local, None), cacheme.Cache(local2, None)])
    node = node_class(id=7)
    await cacheme.get(node)
    assert await cacheme.refresh(node) == {"id": 7, "load": 2}
    assert storage(local).get_sync(node.full_key()).value == {"id": 7, "load": 2}
    assert storage(local2).get_sync(node.full_key()).value == {"id": 7, "load": 2}
    assert await cacheme.get(node) == {"id": 7, "load": 2}


async def test_invalidate_during_a_load_keeps_the_stale_value_out(local: str) -> None:
    gate = asyncio.Event()

    class Slow(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"slow:{self.id}"

        async def load(self) -> str:
            await gate.wait()
            return "old"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(local, None)]

    pending = asyncio.create_task(cacheme.get(Slow(id=1)))
    await asyncio.sleep(0.01)
    await cacheme.invalidate(Slow(id=1))
    gate.set()
    assert await pending == "old"
    assert storage(local).get_sync(Slow(id=1).full_key()) is cacheme.MISSING


async def test_none_is_a_cacheable_value(local: str) -> None:
    class Nothing(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"nothing:{self.id}"

        async def load(self) -> object:  # None, typed so that its result may be compared
            Nothing.loads += 1  # type: ignore[attr-defined]
            return None

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(local, None)]

    Nothing.loads = 0  # type: ignore[attr-defined]
    assert await cacheme.get(Nothing(id=1)) is None
    assert await cacheme.get(Nothing(id=1)) is None
    assert Nothing.loads == 1  # type: ignore[attr-defined]
