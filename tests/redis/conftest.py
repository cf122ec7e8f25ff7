"""Fixtures of the Redis storage tests: unique key prefixes on the shared server, storages that close."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
import redis

from cacheme_redis.storage import RedisStorage
from tests.fixtures.redis_servers import RedisServer


@pytest.fixture
def prefix(redis_shared_url: str) -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted from the shared server afterwards."""
    unique = f"cacheme-test:{uuid.uuid4().hex}:"
    yield unique
    with redis.Redis.from_url(redis_shared_url, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{unique}*", count=1000))
        if keys:
            client.delete(*keys)


@pytest_asyncio.fixture
async def shared(redis_shared_url: str) -> AsyncIterator[RedisStorage]:
    """A batching storage on the shared server, database 0 (use ``prefix`` for keys)."""
    storage = RedisStorage(redis_shared_url)
    await storage.connect()
    yield storage
    await storage.close()


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, e.g. {"mget": 1}."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()}


@pytest.fixture
def server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A private redis-server of this test (its command statistics are this test's alone)."""
    return redis_server_factory()


@pytest.fixture
def control(server: RedisServer) -> redis.Redis:
    """A plain redis-py client of that server, next to (not through) the storage under test."""
    return server.client()
