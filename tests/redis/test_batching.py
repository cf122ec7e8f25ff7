"""Auto-batching: concurrent gets go out as one MGET, sets as one pipeline, deletes as one DEL.

Counted on our own server (CONFIG RESETSTAT, then INFO commandstats), so that
nothing else's traffic is in the figures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio
import redis

import cacheme
from cacheme import singleflight
from cacheme_redis.storage import RedisStorage
from tests.fixtures.redis_servers import RedisServer
from tests.redis.conftest import commandstats
from tests.redis.nodes import item_node
from tests.waiting import flights_done

N = 10_000


def connections_named(control: redis.Redis, name: str) -> int:
    return sum(1 for client in control.client_list() if client.get("name") == name)


async def test_concurrent_gets_are_one_mget(server: RedisServer, control: redis.Redis) -> None:
    storage = RedisStorage(server.url, client_name="batched")
    try:
        await storage.set_many({f"k{i}": str(i).encode() for i in range(0, N, 2)}, None)
        control.config_resetstat()
        keys = [f"k{i}" for i in range(N)]
        values = await asyncio.gather(*(storage.get(key) for key in keys))
        # Each caller gets its own key's value; absent keys read as None.
        assert values == [str(i).encode() if i % 2 == 0 else None for i in range(N)]
        calls = commandstats(control)
        assert calls.get("mget") == 1
        assert "get" not in calls
        assert connections_named(control, "batched") == 1
    finally:
        await storage.close()


async def test_without_batching_every_get_is_a_get(server: RedisServer, control: redis.Redis) -> None:
    # N connections opened at once: on a loaded machine the default 2 s connect timeout is not
    # enough for all of them, and this test counts commands, not timeouts.
    storage = RedisStorage(server.url, batch=False, client_name="unbatched", socket_connect_timeout=20)
    try:
        await storage.set_many({f"k{i}": str(i).encode() for i in range(0, N, 2)}, None)
        control.config_resetstat()
        values = await asyncio.gather(*(storage.get(f"k{i}") for i in range(N)))
        assert values == [str(i).encode() if i % 2 == 0 else None for i in range(N)]
        calls = commandstats(control)
        assert calls.get("get") == N
        assert "mget" not in calls
        assert connections_named(control, "unbatched") > 1
    finally:
        await storage.close()


async def test_concurrent_deletes_are_one_del(server: RedisServer, control: redis.Redis) -> None:
    # A burst of invalidations (each a delete per tier) is one DEL, not one command per key.
    storage = RedisStorage(server.url, client_name="deletes")
    try:
        await storage.set_many({f"d{i}": b"x" for i in range(N)}, None)
        control.config_resetstat()
        await asyncio.gather(*(storage.delete(f"d{i}") for i in range(N)), storage.delete_many(["d0", "d1"]))
        assert commandstats(control).get("del") == 1
        assert control.exists(*(f"d{i}" for i in range(N))) == 0
    finally:
        await storage.close()


async def test_concurrent_sets_are_one_pipeline(server: RedisServer, control: redis.Redis) -> None:
    # One pipeline is one connection; sets one by one take as many as the pool gives.
    for batch, expected_connections in ((True, 1), (False, 100)):
        name = f"sets-{batch}"
        storage = RedisStorage(server.url, batch=batch, client_name=name, pool_size=100)
        try:
            await storage.connect()
            await asyncio.gather(*(storage.set(f"s{i}", f"{batch}{i}".encode(), None) for i in range(2000)))
            assert control.mget([f"s{i}" for i in range(2000)]) == [
                f"{batch}{i}".encode() for i in range(2000)
            ]
            assert connections_named(control, name) == expected_connections
        finally:
            await storage.close()


async def test_duplicate_keys_in_one_batch(server: RedisServer, control: redis.Redis) -> None:
    storage = RedisStorage(server.url)
    try:
        await storage.set("dup", b"d", None)
        control.config_resetstat()
        values = await asyncio.gather(*(storage.get(key) for key in ["dup", "none", "dup", "dup", "none"]))
        assert values == [b"d", None, b"d", b"d", None]
        assert commandstats(control).get("mget") == 1
    finally:
        await storage.close()


async def test_a_cancelled_caller_does_not_cancel_its_batch(
    server: RedisServer, control: redis.Redis
) -> None:
    storage = RedisStorage(server.url)
    try:
        await storage.set_many({f"k{i}": str(i).encode() for i in range(100)}, None)
        control.config_resetstat()
        tasks = [asyncio.create_task(storage.get(f"k{i}")) for i in range(100)]
        await asyncio.sleep(0)  # every task has queued its key; the sender task is created, not yet run
        tasks[0].cancel()
        tasks[50].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[50], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i not in (0, 50)] == [
            str(i).encode() for i in range(100) if i not in (0, 50)
        ]
        assert commandstats(control).get("mget") == 1
        # Cancelling in the middle of the batch's round trip leaves nothing behind either.
        tasks = [asyncio.create_task(storage.get(f"k{i}")) for i in range(100)]
        control.client_pause(200)
        await asyncio.sleep(0.05)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[1::2] == [str(i).encode() for i in range(1, 100, 2)]
        assert await storage.get("k7") == b"7"
    finally:
        await storage.close()


async def test_a_failed_batch_gives_each_caller_the_error(server: RedisServer) -> None:
    storage = RedisStorage(server.url)
    await storage.connect()
    server.kill()
    try:
        results = await asyncio.gather(*(storage.get(f"k{i}") for i in range(100)), return_exceptions=True)
        assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
        assert len({id(r) for r in results}) == 100  # each caller has its own exception object
        results = await asyncio.gather(
            *(storage.set(f"k{i}", b"v", None) for i in range(100)), return_exceptions=True
        )
        assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)
    finally:
        await storage.close()


async def wait_until_written(control: redis.Redis, count: int) -> None:
    """get_all answers before its write-back ends: wait until it has ended and the server has the keys."""
    for _ in range(500):
        if singleflight.in_flight_count() == 0 and control.dbsize() >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server holds {control.dbsize()} keys, not {count}")


@pytest_asyncio.fixture
async def registered(server: RedisServer) -> AsyncIterator[str]:
    name = f"redis-batching-{uuid.uuid4().hex[:8]}"
    await cacheme.register_storage(name, RedisStorage(server.url))
    yield name
    await cacheme.unregister_storage(name)


async def test_concurrent_cacheme_gets_read_with_one_mget(registered: str, control: redis.Redis) -> None:
    node_class = item_node(registered)
    nodes = [node_class(id=i) for i in range(N)]
    assert await cacheme.get_all(nodes) == [f"value-{i}" for i in range(N)]
    await wait_until_written(control, N)
    control.config_resetstat()
    values = await asyncio.gather(*(cacheme.get(node) for node in nodes))
    assert values == [f"value-{i}" for i in range(N)]
    assert cacheme.stats(node_class).hit_count() == N
    calls = commandstats(control)
    assert calls.get("mget") == 1
    assert "get" not in calls


async def test_a_write_batch_mixing_ttls_and_repeating_keys(
    server: RedisServer, control: redis.Redis
) -> None:
    # Concurrent sets land in one batch: keys without expiry go out as MSET, the others as SET PX,
    # and for a key written twice in the batch the later write wins, whichever kind it is.
    storage = RedisStorage(server.url)
    try:
        await storage.connect()
        control.config_resetstat()
        await asyncio.gather(
            storage.set("plain", b"1", None),
            storage.set("short", b"2", timedelta(seconds=30)),
            storage.set("becomes-plain", b"old", timedelta(seconds=30)),
            storage.set("becomes-plain", b"new", None),
            storage.set("becomes-short", b"old", None),
            storage.set("becomes-short", b"new", timedelta(seconds=30)),
        )
        assert control.mget(["plain", "short", "becomes-plain", "becomes-short"]) == [
            b"1",
            b"2",
            b"new",
            b"new",
        ]
        assert control.pttl("plain") == -1 and control.pttl("becomes-plain") == -1
        assert 0 < control.pttl("short") <= 30_000 and 0 < control.pttl("becomes-short") <= 30_000
        stats = commandstats(control)
        assert stats.get("mset") == 1 and stats.get("set") == 2
    finally:
        await storage.close()


async def test_a_batch_cancelled_before_it_was_sent_strands_nobody(
    server: RedisServer, control: redis.Redis
) -> None:
    storage = RedisStorage(server.url)
    try:
        await storage.set_many({f"k{i}": str(i).encode() for i in range(100)}, None)
        gets = [asyncio.create_task(storage.get(f"k{i}")) for i in range(100)]
        await asyncio.sleep(0)  # every get is queued; the sender task has not run
        for task in asyncio.all_tasks():  # what a shutdown handler cancelling every task does
            if task is not asyncio.current_task() and task not in gets:
                task.cancel()
        # The gets still wait (they were not cancelled): a new sender sends them.
        outcomes = await asyncio.wait_for(asyncio.gather(*gets, return_exceptions=True), 5)
        assert outcomes == [str(i).encode() for i in range(100)]
        # The storage still sends what it is given.
        values = await asyncio.wait_for(asyncio.gather(*(storage.get(f"k{i}") for i in range(100))), 5)
        assert values == [str(i).encode() for i in range(100)]
    finally:
        await storage.close()


async def test_keys_loaded_in_one_loop_turn_are_written_with_one_command(
    server: RedisServer, control: redis.Redis
) -> None:
    """The engine writes the keys loaded in one turn together (one write per tier, not a task, a
    deadline and a command each), even with the storage's own batching off."""
    name = f"unbatched-{uuid.uuid4().hex[:8]}"
    await cacheme.register_storage(name, cacheme.Storage(server.url, batch=False))
    try:
        node = item_node(name, ttl=None)
        control.config_resetstat()
        values = await asyncio.gather(*(cacheme.get(node(id=i)) for i in range(200)))
        assert values == [f"value-{i}" for i in range(200)]
        assert await flights_done()
        calls = commandstats(control)
        assert (calls.get("mset"), calls.get("set")) == (1, None), calls
        assert calls.get("mget") == 1
        assert control.dbsize() == 200 and node.loaded == 200
    finally:
        await cacheme.unregister_storage(name)
