"""The storage contract on Redis: the shared single server, and our own Redis Cluster.

Each case starts empty without touching anybody else's data: on the shared
server on 127.0.0.1:6379 the test gets a logical database of its own
(``redis_shared_db``: 15 down to 8, reserved with a lock key so that two test
runs at once never share one, flushed before and after); on the cluster that
the test run started itself every node is flushed before the test.
"""

from __future__ import annotations

import pytest

from cacheme.storage import BaseStorage
from cacheme_redis.storage import RedisStorage
from tests.conformance.cases import StorageCase


async def _single(request: pytest.FixtureRequest, *, batch: bool) -> BaseStorage:
    url: str = request.getfixturevalue("redis_shared_url")
    database: int = request.getfixturevalue("redis_shared_db")
    storage = RedisStorage(f"{url}/{database}", batch=batch)
    await storage.connect()
    return storage


async def _single_batched(request: pytest.FixtureRequest) -> BaseStorage:
    return await _single(request, batch=True)


async def _single_unbatched(request: pytest.FixtureRequest) -> BaseStorage:
    return await _single(request, batch=False)


async def _cluster(request: pytest.FixtureRequest) -> BaseStorage:
    cluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    storage = RedisStorage(cluster.url, cluster=True)
    await storage.connect()
    return storage


CASES = [
    StorageCase(id="redis", make=_single_batched),
    StorageCase(id="redis-unbatched", make=_single_unbatched),
    StorageCase(id="redis-cluster", make=_cluster),
]
