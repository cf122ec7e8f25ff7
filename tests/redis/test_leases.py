"""``RedisLeases``, the three scripts of Redis's leases, driven directly on a server and a cluster.

Leases through the engine, on every backend: tests/integration/test_leases.py; fleets of real
processes: tests/fleet/test_leases.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
import redis

from cacheme.entry import LEASE_MARK
from cacheme_redis.lease import RedisLeases
from cacheme_redis.storage import RedisStorage
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT, RedisClusterProcesses


def fenced(
    values: dict[str, bytes], marks: Mapping[str, bytes], ttl_ms: int | None
) -> tuple[dict[str, bytes], Mapping[str, bytes], dict[str, int | None]]:
    """``write``'s arguments: ``values`` under ``marks``, each with the expiry ``ttl_ms``."""
    return values, marks, dict.fromkeys(values, ttl_ms)


@pytest.fixture(params=["redis", "redis-cluster"])
def lease_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any], Callable[[], Any]]]:
    """(url, storage options, a new plain client) of a single server or of the test cluster."""
    if request.param == "redis":
        yield (
            f"redis://{SHARED_HOST}:{SHARED_PORT}/0",
            {},
            lambda: redis.Redis(host=SHARED_HOST, port=SHARED_PORT),
        )
    else:
        cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
        yield cluster.url, {"cluster": True}, lambda: redis.RedisCluster.from_url(cluster.url)


async def test_the_three_scripts_grant_answer_the_time_left_or_the_value_and_fence(
    lease_server: tuple[str, dict[str, Any], Callable[[], Any]],
) -> None:
    url, options, client = lease_server
    storage = RedisStorage(url, **options)
    leases = RedisLeases(storage)
    other = client()
    prefix = f"lease-proto-{uuid.uuid4().hex[:8]}"
    keys = [f"{prefix}:{i}" for i in range(20)]
    try:
        other.set(keys[1], b"a value")
        first = {key: LEASE_MARK + bytes([i]) * 16 for i, key in enumerate(keys)}
        answers = await leases.acquire(first, 5000)
        assert answers[1] == b"a value"
        assert [answers[0], *answers[2:]] == [0] * 19  # granted, in one pipeline across slots
        again = await leases.acquire({keys[0]: LEASE_MARK + b"x" * 16}, 5000)
        assert isinstance(again[0], int) and 4000 < again[0] <= 5000  # held: the time it has left
        # The write lands only where the mark still stands.
        other.delete(keys[2])  # an invalidate
        other.set(keys[3], b"refreshed")  # a refresh
        written = await leases.write(*fenced({key: b"loaded" for key in keys[2:6] + keys[:1]}, first, 60_000))
        assert written == 3  # keys[0], keys[4], keys[5]
        assert other.get(keys[0]) == b"loaded" and 55_000 < other.pttl(keys[0]) <= 60_000
        assert other.get(keys[2]) is None and other.get(keys[3]) == b"refreshed"
        assert await leases.write(*fenced({keys[6]: b"forever"}, first, None)) == 1
        assert other.pttl(keys[6]) == -1
        # A release deletes only the key's own mark.
        await leases.release({keys[7]: first[keys[7]], keys[8]: LEASE_MARK + b"another's mark!!"})
        assert other.get(keys[7]) is None and other.get(keys[8]) == first[keys[8]]
    finally:
        for key in keys:
            other.delete(key)
        other.close()
        await storage.close()


async def test_thousands_of_keys_in_one_call_are_split_into_scripts_of_a_thousand(
    lease_server: tuple[str, dict[str, Any], Callable[[], Any]],
) -> None:
    url, options, client = lease_server
    storage = RedisStorage(url, **options)
    leases = RedisLeases(storage)
    other = client()
    prefix = f"lease-many-{uuid.uuid4().hex[:8]}"
    keys = [f"{{{prefix}}}:{i}" for i in range(2500)]  # one hash slot: the group is split by size alone
    marks = {key: LEASE_MARK + i.to_bytes(16, "big") for i, key in enumerate(keys)}
    try:
        assert await leases.acquire(marks, 5000) == [0] * 2500
        held = await leases.acquire({key: LEASE_MARK + b"y" * 16 for key in keys}, 5000)
        assert all(isinstance(left, int) and 0 < left <= 5000 for left in held)
        assert await leases.write(*fenced({key: key.encode() for key in keys}, marks, 60_000)) == 2500
        assert other.get(keys[-1]) == keys[-1].encode()
        await leases.release(marks)  # the marks are gone: nothing deleted
        assert other.get(keys[0]) == keys[0].encode()
    finally:
        for at in range(0, len(keys), 500):
            other.delete(*keys[at : at + 500])
        other.close()
        await storage.close()
