"""RedisStorage on a real 3-master Redis Cluster started for the test run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio

import cacheme
from cacheme_redis.storage import RedisStorage
from tests.fixtures.redis_servers import RedisClusterProcesses
from tests.redis.nodes import item_node
from tests.waiting import flights_done


def keys_per_master(cluster: RedisClusterProcesses) -> list[int]:
    counts = []
    for server in cluster.masters:
        with server.client() as client:
            counts.append(int(client.dbsize()))
    return counts


@pytest_asyncio.fixture
async def cluster_storage(redis_cluster: RedisClusterProcesses) -> AsyncIterator[RedisStorage]:
    redis_cluster.flush()
    storage = RedisStorage(redis_cluster.url, cluster=True)
    await storage.connect()
    yield storage
    await storage.close()
    redis_cluster.flush()


async def test_batches_span_every_slot_without_crossslot(
    cluster_storage: RedisStorage, redis_cluster: RedisClusterProcesses
) -> None:
    items = {f"spread:{i}": str(i).encode() for i in range(5000)}
    await cluster_storage.set_many(items, None)
    assert all(count > 1000 for count in keys_per_master(redis_cluster))
    keys = [*items, "spread:absent", "{tagged}:absent"]
    assert await cluster_storage.get_many(keys) == items
    values = await asyncio.gather(*(cluster_storage.get(key) for key in keys))
    assert values == [*items.values(), None, None]
    await cluster_storage.delete_many(list(items)[:2500])
    assert sum(keys_per_master(redis_cluster)) == 2500


async def test_keys_of_one_hash_slot(cluster_storage: RedisStorage) -> None:
    items = {f"{{user:7}}:{i}": bytes([i]) for i in range(50)}
    await cluster_storage.set_many(items, None)
    assert await cluster_storage.get_many([*items, "{user:7}:absent"]) == items
    await cluster_storage.delete_many(list(items))
    assert await cluster_storage.get_many(list(items)) == {}


async def test_requests_wait_for_a_free_connection(redis_cluster: RedisClusterProcesses) -> None:
    # redis-py's cluster client fails when a node has no free connection; the storage waits instead.
    storage = RedisStorage(redis_cluster.url, cluster=True, pool_size=2, batch=False)
    try:
        values = await asyncio.gather(*(storage.get(f"absent:{i}") for i in range(600)))
        assert values == [None] * 600
    finally:
        await storage.close()


@pytest_asyncio.fixture
async def registered(redis_cluster: RedisClusterProcesses) -> AsyncIterator[str]:
    redis_cluster.flush()
    name = f"redis-cluster-{uuid.uuid4().hex[:8]}"
    await cacheme.register_storage(name, RedisStorage(redis_cluster.url, cluster=True))
    yield name
    await cacheme.unregister_storage(name)
    redis_cluster.flush()


async def test_get_all_of_1000_keys_over_all_slots(
    registered: str, redis_cluster: RedisClusterProcesses
) -> None:
    node_class = item_node(registered)
    nodes = [node_class(id=i) for i in range(1000)]
    expected = [f"value-{i}" for i in range(1000)]
    assert await cacheme.get_all(nodes) == expected
    assert await flights_done()
    counts = keys_per_master(redis_cluster)
    assert sum(counts) == 1000
    assert all(count > 200 for count in counts)  # every master holds its share
    assert await cacheme.get_all(nodes) == expected
    metrics = cacheme.stats(node_class)
    assert metrics.hit_count() == 1000
    assert metrics.load_count() == 1000
    assert metrics.storage_error_count() == 0
    # Single gets through the core, coalesced per turn, split by slot.
    assert await asyncio.gather(*(cacheme.get(node) for node in nodes)) == expected
    assert metrics.hit_count() == 2000
    assert node_class.loaded == 1000


async def test_a_write_batch_mixing_ttls_over_every_slot(
    cluster_storage: RedisStorage, redis_cluster: RedisClusterProcesses
) -> None:
    forever = {f"forever:{i}": b"f" for i in range(300)}
    expiring = {f"expiring:{i}": b"e" for i in range(300)}
    await asyncio.gather(
        *(cluster_storage.set(key, value, None) for key, value in forever.items()),
        *(cluster_storage.set(key, value, timedelta(seconds=30)) for key, value in expiring.items()),
    )
    assert await cluster_storage.get_many([*forever, *expiring]) == forever | expiring
    assert sum(keys_per_master(redis_cluster)) == 600
