"""MongoStorage behind the core: cacheme.get / get_all / invalidate with a MongoDB tier."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest_asyncio

import cacheme


def storage_name() -> str:
    return f"mongo-{uuid.uuid4().hex[:8]}"


def user_node_class(storage: str, loads: collections.Counter[int]) -> type[cacheme.Node]:
    class UserNode(cacheme.Node):
        user_id: int

        def key(self) -> str:
            return f"user:{self.user_id}"

        async def load(self) -> dict[str, Any]:
            loads[self.user_id] += 1
            await asyncio.sleep(0.05)  # keep the load in flight while the other requests arrive
            return {"id": self.user_id, "name": f"user-{self.user_id}"}

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=timedelta(minutes=5))]

    return UserNode


async def written_back(storage: cacheme.BaseStorage, nodes: list[cacheme.Node]) -> None:
    """Wait until the engine's write-back of these nodes has landed in the storage.

    The engine answers callers first and writes back afterwards, in the background of the same
    flight; a request arriving before that write ends joins the finished flight.
    """
    keys = list({node.full_key() for node in nodes})
    for _ in range(200):
        if len(await storage.get_many(keys)) == len(keys):
            await asyncio.sleep(0.05)  # the flight is forgotten once its write returns
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the engine never wrote the values back")


def expected(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "name": f"user-{user_id}"}


@dataclass
class MongoTier:
    storage: cacheme.BaseStorage
    node_class: type[cacheme.Node]
    loads: collections.Counter[int]


@pytest_asyncio.fixture
async def mongo_tier(mongo_url: str, mongo_database: str) -> AsyncIterator[MongoTier]:
    """A MongoDB storage registered under a fresh name, and a node class cached in it."""
    name = storage_name()
    storage = cacheme.Storage(mongo_url, database=mongo_database, collection="cache")
    await cacheme.register_storage(name, storage)
    loads: collections.Counter[int] = collections.Counter()
    try:
        yield MongoTier(storage, user_node_class(name, loads), loads)
    finally:
        await cacheme.unregister_storage(name)


async def test_a_thousand_concurrent_gets_load_each_key_once(mongo_tier: MongoTier) -> None:
    storage, node_class, loads = mongo_tier.storage, mongo_tier.node_class, mongo_tier.loads
    ids = [i % 100 for i in range(1000)]
    results = await asyncio.gather(*(cacheme.get(node_class(user_id=i)) for i in ids))  # type: ignore[call-arg]
    assert results == [expected(i) for i in ids]
    assert loads == {i: 1 for i in range(100)}
    stats = cacheme.stats(node_class)
    assert stats.request_count() == 1000
    assert stats.load_count() == 100
    assert stats.storage_error_count() == 0
    # Every value is now in MongoDB: later requests are answered from it, loading nothing.
    await written_back(storage, [node_class(user_id=i) for i in range(100)])  # type: ignore[call-arg]
    again = await asyncio.gather(*(cacheme.get(node_class(user_id=i)) for i in ids))  # type: ignore[call-arg]
    assert again == results
    assert loads == {i: 1 for i in range(100)}
    assert stats.hit_count() == 1000
    assert stats.storage_error_count() == 0


async def test_get_all_and_invalidate_through_mongo(mongo_tier: MongoTier) -> None:
    storage, node_class, loads = mongo_tier.storage, mongo_tier.node_class, mongo_tier.loads
    ids = [1, 2, 2, 3, 1]
    nodes = [node_class(user_id=i) for i in ids]  # type: ignore[call-arg]
    assert await cacheme.get_all(nodes) == [expected(i) for i in ids]
    assert await cacheme.get_all(nodes) == [expected(i) for i in ids]
    assert loads == {1: 1, 2: 1, 3: 1}
    await written_back(storage, nodes)
    await cacheme.invalidate(node_class(user_id=2))  # type: ignore[call-arg]
    assert await storage.get(node_class(user_id=2).full_key()) is None  # type: ignore[call-arg]
    assert await cacheme.get(node_class(user_id=2)) == expected(2)  # type: ignore[call-arg]
    assert loads == {1: 1, 2: 2, 3: 1}


async def test_requests_are_answered_by_the_loader_when_the_server_goes_away(
    private_mongo_standin: Any,
) -> None:
    name = storage_name()
    storage = cacheme.Storage(private_mongo_standin.url, database="db", connect_timeout=0.5, timeout=1)
    await cacheme.register_storage(name, storage)
    loads: collections.Counter[int] = collections.Counter()
    node_class = user_node_class(name, loads)
    try:
        for i in range(50):
            await cacheme.get(node_class(user_id=i))  # type: ignore[call-arg]
        await written_back(storage, [node_class(user_id=i) for i in range(50)])  # type: ignore[call-arg]
        stats = cacheme.stats(node_class)
        assert stats.storage_error_count() == 0
        private_mongo_standin.stop()  # the server goes away mid-run
        ids = [i % 100 for i in range(400)]
        results = await asyncio.wait_for(
            asyncio.gather(*(cacheme.get(node_class(user_id=i)) for i in ids)),  # type: ignore[call-arg]
            60,
        )
        assert results == [expected(i) for i in ids]
        # Cached or not, every key had to come from the loader again: the reads failed.
        assert loads == {i: 2 if i < 50 else 1 for i in range(100)}
        assert stats.storage_error_count() >= 100
    finally:
        await cacheme.unregister_storage(name)
