"""RedisStorage on one server: expiry in milliseconds, pool limits, unix sockets, several loops."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis

import cacheme
from cacheme_redis.storage import RedisStorage
from tests.fixtures.redis_servers import RedisServer


async def test_a_300_ms_ttl_lives_300_ms(shared: RedisStorage, prefix: str, redis_shared_url: str) -> None:
    ttl = timedelta(milliseconds=300)
    await shared.set(f"{prefix}one", b"1", ttl)
    await shared.set_many({f"{prefix}a": b"a", f"{prefix}b": b"b"}, ttl)
    await shared.set_many({f"{prefix}forever": b"f"}, None)
    with redis.Redis.from_url(redis_shared_url) as client:
        for key in ("one", "a", "b"):
            # Stored with PX: not rounded to 0 nor up to a whole second.
            assert 0 < client.pttl(f"{prefix}{key}") <= 300
        assert client.pttl(f"{prefix}forever") == -1
    await asyncio.sleep(0.1)
    assert await shared.get_many([f"{prefix}one", f"{prefix}a", f"{prefix}b"]) == {
        f"{prefix}one": b"1",
        f"{prefix}a": b"a",
        f"{prefix}b": b"b",
    }
    await asyncio.sleep(0.35)
    assert await shared.get(f"{prefix}one") is None
    assert await shared.get_many([f"{prefix}a", f"{prefix}b", f"{prefix}forever"]) == {
        f"{prefix}forever": b"f"
    }


async def test_values_are_bytes_exactly(shared: RedisStorage, prefix: str) -> None:
    values = {f"{prefix}{i}": bytes([i]) * i for i in range(256)}
    await asyncio.gather(*(shared.set(key, value, None) for key, value in values.items()))
    read = await asyncio.gather(*(shared.get(key) for key in values))
    assert read == list(values.values())


async def test_the_pool_makes_requests_wait_and_never_opens_more_than_pool_size(
    redis_shared_url: str,
) -> None:
    name = f"cacheme-pool-{uuid.uuid4().hex[:8]}"
    storage = RedisStorage(redis_shared_url, pool_size=3, batch=False, client_name=name)
    try:
        # 500 concurrent requests on 3 connections: all wait their turn, none fails.
        values = await asyncio.gather(*(storage.get(f"cacheme-test:absent:{i}") for i in range(500)))
        assert values == [None] * 500
        with redis.Redis.from_url(redis_shared_url) as client:
            ours = [c for c in client.client_list() if c.get("name") == name]
        assert 1 <= len(ours) <= 3
    finally:
        await storage.close()


async def test_a_pool_timeout_fails_the_request_instead_of_hanging(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    storage = RedisStorage(server.url, pool_size=1, pool_timeout=0.3, batch=False)
    blocker = redis.Redis.from_url(server.url)
    try:
        await storage.connect()
        # The only connection is busy in a command that blocks server-side (the
        # DEBUG SLEEP of another client stalls the single-threaded server).
        slow = asyncio.create_task(asyncio.to_thread(blocker.execute_command, "DEBUG", "SLEEP", "1.5"))
        await asyncio.sleep(0.1)
        first = asyncio.create_task(storage.get("k"))
        await asyncio.sleep(0.05)
        with pytest.raises(redis.exceptions.ConnectionError):
            await storage.get("k")  # waits for the pool at most pool_timeout
        assert await first is None  # the first one is answered once the server is back
        await slow
    finally:
        blocker.close()
        await storage.close()


async def test_unix_socket(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory(unix_socket=True)
    storage = RedisStorage(f"unix://{server.unix_socket}?db=2")
    try:
        await storage.connect()
        await storage.set("k", b"over the socket", None)
        assert await storage.get("k") == b"over the socket"
        with redis.Redis(unix_socket_path=str(server.unix_socket), db=2) as client:
            assert client.get("k") == b"over the socket"
    finally:
        await storage.close()


async def test_tls_with_the_servers_certificate(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory(tls=True)
    assert server.url.startswith("rediss://")
    storage = cacheme.Storage(server.url, ssl_ca_certs=str(server.certificate))
    try:
        await storage.connect()
        await storage.set("k", b"over tls", timedelta(seconds=30))
        await storage.set_many({"a": b"1", "b": b"2"}, None)
        assert await storage.get("k") == b"over tls"
        assert await storage.get_many(["a", "b", "absent"]) == {"a": b"1", "b": b"2"}
        with server.client() as client:
            assert client.get("k") == b"over tls"
            assert 0 < client.pttl("k") <= 30_000
    finally:
        await storage.close()
    # A server whose certificate nobody vouches for is refused: the connection fails, it is not trusted.
    untrusting = cacheme.Storage(server.url)
    try:
        with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate"):
            await untrusting.connect()
    finally:
        await untrusting.close()


def test_two_loops_in_two_threads_share_the_storage_but_not_their_batches(
    redis_shared_url: str, prefix: str
) -> None:
    storage = RedisStorage(redis_shared_url)
    start = threading.Barrier(2)
    results: dict[str, list[bytes | None]] = {}
    errors: list[BaseException] = []

    async def work(name: str) -> None:
        await asyncio.to_thread(start.wait)
        keys = [f"{prefix}{name}:{i}" for i in range(2000)]
        await asyncio.gather(*(storage.set(key, key.encode(), None) for key in keys))
        results[name] = list(await asyncio.gather(*(storage.get(key) for key in keys)))
        await storage.close()

    def thread(name: str) -> None:
        try:
            asyncio.run(work(name))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=thread, args=(name,)) for name in ("left", "right")]
    for each in threads:
        each.start()
    for each in threads:
        each.join(timeout=60)
    assert errors == []
    for name in ("left", "right"):
        assert results[name] == [f"{prefix}{name}:{i}".encode() for i in range(2000)]


async def test_storage_is_usable_again_after_close(shared: RedisStorage, prefix: str) -> None:
    await shared.set(f"{prefix}k", b"v", None)
    await shared.close()
    assert await shared.get(f"{prefix}k") == b"v"
