"""A Redis that dies in the middle of a run costs no request, and caching resumes when it is back.

The server is our own process on a free port: the test SIGKILLs it while
thousands of concurrent ``cacheme.get`` are running, then starts a new one on
the same port.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable

import pytest
import redis

import cacheme
from cacheme_redis.storage import RedisStorage
from tests.fixtures.redis_servers import RedisServer
from tests.redis.nodes import item_node
from tests.waiting import flights_done

REQUESTS = 5000
KEYS = 2000


async def test_server_killed_mid_run_then_back(
    redis_server_factory: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = redis_server_factory()
    name = f"redis-fault-{uuid.uuid4().hex[:8]}"
    await cacheme.register_storage(name, RedisStorage(server.url, socket_timeout=1, socket_connect_timeout=1))
    try:
        node_class = item_node(name)
        metrics = cacheme.stats(node_class)
        # Warm the cache with half the keys, so that requests before the kill are hits.
        await cacheme.get_all([node_class(id=i) for i in range(0, KEYS, 2)])
        await flights_done()

        rng = random.Random(7)
        killed = asyncio.Event()

        async def request(i: int) -> tuple[int, str]:
            await asyncio.sleep(rng.random() * 0.6)  # spread over 0.6 s; the kill comes at 0.3 s
            node_id = i % KEYS
            return node_id, await cacheme.get(node_class(id=node_id))

        async def kill_in_the_middle() -> None:
            await asyncio.sleep(0.3)
            server.kill()
            killed.set()

        with caplog.at_level(logging.WARNING, logger="cacheme"):
            answers, _ = await asyncio.gather(
                asyncio.gather(*(request(i) for i in range(REQUESTS))), kill_in_the_middle()
            )
        assert killed.is_set()
        # Every request was answered, with the right value.
        assert len(answers) == REQUESTS
        assert all(value == f"value-{node_id}" for node_id, value in answers)
        assert metrics.storage_error_count() > 0
        assert metrics.hit_count() > 0  # the part before the kill was served by Redis
        assert any("failed" in record.getMessage() for record in caplog.records)
        await flights_done()

        # The errors opened the storage's circuit breaker: Redis is skipped, no I/O.
        assert cacheme.storage_health(name).state == "open"

        # A new server on the same port: after the breaker's cool-down one probe goes through,
        # its success closes the breaker, and caching resumes (the storage reconnects by itself).
        server.start()
        probe = 10 * KEYS
        for _ in range(100):
            await cacheme.get(node_class(id=probe))
            probe += 1
            if cacheme.storage_health(name).state == "closed":
                break
            await asyncio.sleep(0.05)
        assert cacheme.storage_health(name).state == "closed"
        await flights_done()
        fresh = node_class(id=KEYS + 1)
        errors_before = metrics.storage_error_count()
        assert await cacheme.get(fresh) == f"value-{KEYS + 1}"
        await flights_done()
        with server.client() as client:
            assert client.get(fresh.full_key()) is not None  # written to the new server
        hits_before, loads_before = metrics.hit_count(), metrics.load_count()
        assert await cacheme.get(fresh) == f"value-{KEYS + 1}"
        assert metrics.hit_count() == hits_before + 1
        assert metrics.load_count() == loads_before
        # Concurrent traffic is served from the new server too.
        many = [node_class(id=i) for i in range(100)]
        await cacheme.get_all(many)
        await flights_done()
        hits_before = metrics.hit_count()
        assert await asyncio.gather(*(cacheme.get(node) for node in many)) == [
            f"value-{i}" for i in range(100)
        ]
        assert metrics.hit_count() == hits_before + 100
        # At most the first request after the restart, on a connection broken by the kill, may fail.
        assert metrics.storage_error_count() - errors_before <= 1
    finally:
        await cacheme.unregister_storage(name)


async def test_a_server_answering_garbage_is_a_storage_error(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    name = f"redis-garbage-{uuid.uuid4().hex[:8]}"
    await cacheme.register_storage(name, RedisStorage(server.url, batch=False))
    try:
        node_class = item_node(name)
        node = node_class(id=1)
        client = server.client()
        client.rpush(node.full_key(), b"not a string value")  # GET on a list: WRONGTYPE
        assert await cacheme.get(node) == "value-1"
        assert cacheme.stats(node_class).storage_error_count() == 1
        await flights_done()
        client.set(node.full_key(), b"\xc1 not msgpack")  # bytes the serializer cannot read
        assert await cacheme.get(node) == "value-1"
        assert cacheme.stats(node_class).storage_error_count() == 2
        assert node_class.loaded == 2
        client.close()
    finally:
        await cacheme.unregister_storage(name)


async def test_storage_error_types_are_redis_errors(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    storage = RedisStorage(server.url)
    await storage.connect()
    server.kill()
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            await storage.get("k")
        with pytest.raises(redis.exceptions.ConnectionError):
            await storage.get_many(["a", "b"])
        with pytest.raises(redis.exceptions.ConnectionError):
            await storage.set_many({"a": b"1"}, None)
        with pytest.raises(redis.exceptions.ConnectionError):
            await storage.delete_many(["a"])
        server.start()
        await storage.set("k", b"back", None)  # recovers with no new storage and no reconnect call
        assert await storage.get("k") == b"back"
    finally:
        await storage.close()
