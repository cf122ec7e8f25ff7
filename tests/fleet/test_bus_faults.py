"""The invalidation bus in one process: configuration errors, a blackholed or dead bus server, unbinding.

The bus server is the shared Redis behind a TCP proxy of the tests' own, which blackholes
(accepts, never answers) or resets the traffic. Another process's messages are PUBLISHed on
the channel directly, as another member of the fleet would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
import redis

import cacheme
from cacheme.storage import MISSING
from cacheme_redis.bus import CHANNEL
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT

HEALTH = cacheme.Health(read_timeout=0.2, write_timeout=0.5, failures=3, window=10.0, cool_down=0.25)


async def eventually(condition: Callable[[], bool], seconds: float) -> float:
    """Wait until ``condition()`` holds (at most ``seconds``); how long it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@dataclass
class BoundChain:
    shared: str
    local: cacheme.LocalStorage
    local_name: str
    node_class: Any


def chain_node(local: str, shared: str) -> Any:
    class Value(cacheme.Node):
        id: int
        loads: ClassVar[int] = 0

        def key(self) -> str:
            return f"bus-fault:{self.id}"

        async def load(self) -> str:
            Value.loads += 1
            return f"{self.id}-{Value.loads}"

        class Meta(cacheme.Node.Meta):
            version = "v1"

    Value.Meta.caches = [
        cacheme.Cache(local, timedelta(seconds=60)),
        cacheme.Cache(shared, timedelta(seconds=60)),
    ]
    return Value


@pytest_asyncio.fixture
async def bound(tcp_proxy: Callable[[str, int], TcpProxy]) -> AsyncIterator[tuple[BoundChain, TcpProxy]]:
    proxy = tcp_proxy(SHARED_HOST, SHARED_PORT)
    suffix = uuid.uuid4().hex[:8]
    shared, local_name = f"shared-{suffix}", f"local-{suffix}"
    await cacheme.register_storage(shared, cacheme.Storage(proxy.url("redis", "/0"), health=HEALTH))
    local = cacheme.Storage("local://lru", size=1000, bus=shared)
    assert isinstance(local, cacheme.LocalStorage)
    await cacheme.register_storage(local_name, local)
    cacheme.set_prefix(f"bus-fault-{suffix}")
    try:
        yield BoundChain(shared, local, local_name, chain_node(local_name, shared)), proxy
    finally:
        cacheme.set_prefix("cacheme")
        for name in (local_name, shared):
            if name in cacheme.registered_storages():
                await cacheme.unregister_storage(name)
        client = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
        keys = list(client.scan_iter(match=f"bus-fault-{suffix}:*"))
        if keys:
            client.delete(*keys)


def publish_from_another_process(keys: list[str] | None) -> int:
    body: dict[str, Any] = {"v": 1, "from": "another-process"}
    body.update({"all": True} if keys is None else {"keys": keys})
    with redis.Redis(host=SHARED_HOST, port=SHARED_PORT) as client:
        return int(client.publish(CHANNEL, json.dumps(body)))


async def test_another_process_message_drops_the_key_and_one_for_every_key_empties(
    bound: tuple[BoundChain, TcpProxy],
) -> None:
    chain, _ = bound
    nodes = [chain.node_class(id=i) for i in range(3)]
    await cacheme.get_all(nodes)
    assert publish_from_another_process([nodes[0].full_key()]) >= 1
    await eventually(lambda: chain.local.get_sync(nodes[0].full_key()) is MISSING, 2)
    assert chain.local.get_sync(nodes[1].full_key()) is not MISSING
    publish_from_another_process(None)
    await eventually(lambda: chain.local.get_sync(nodes[1].full_key()) is MISSING, 2)
    health = cacheme.bus_health(chain.shared)
    assert (health.received_count, health.dropped_count, health.lost_count) == (2, 1, 0)


async def test_a_blackholed_bus_is_noticed_empties_the_local_tier_and_never_fails_a_request(
    bound: tuple[BoundChain, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    chain, proxy = bound
    node = chain.node_class(id=1)
    first = await cacheme.get(node)
    assert chain.local.get_sync(node.full_key()) is not MISSING
    proxy.blackhole()
    noticed = await eventually(lambda: not cacheme.bus_health(chain.shared).subscribed, 5)
    assert noticed < 3.5  # a PING after 1 s of silence, unanswered for 1 s more
    assert chain.local.get_sync(node.full_key()) is MISSING  # emptied
    # Requests are answered (from the source: the shared tier is blackholed too, its breaker opens),
    # and the local tier takes no writes while the bus is down.
    for _ in range(5):
        assert (await cacheme.get(node)).startswith("1-")
    assert chain.local.get_sync(node.full_key()) is MISSING
    await cacheme.invalidate(node)  # its announcement fails: logged and counted, not raised
    assert cacheme.bus_health(chain.shared).announce_failures == 1
    proxy.pass_through()
    await eventually(lambda: cacheme.bus_health(chain.shared).subscribed, 10)
    assert cacheme.bus_health(chain.shared).lost_count == 1
    assert first.startswith("1-")
    assert "lost its subscription" in caplog.text and "subscribed again" in caplog.text
    # Serving again: the next load is kept by the local tier.
    await cacheme.get(node)
    await eventually(lambda: chain.local.get_sync(node.full_key()) is not MISSING, 2)


async def test_a_reset_bus_connection_is_noticed_at_once(bound: tuple[BoundChain, TcpProxy]) -> None:
    chain, proxy = bound
    proxy.reset()
    noticed = await eventually(lambda: not cacheme.bus_health(chain.shared).subscribed, 5)
    assert noticed < 1.0
    proxy.pass_through()
    await eventually(lambda: cacheme.bus_health(chain.shared).subscribed, 10)


async def test_unregistering_the_local_storage_stops_its_bus(bound: tuple[BoundChain, TcpProxy]) -> None:
    chain, _ = bound
    assert cacheme.bus_health(chain.shared).subscribed
    await cacheme.unregister_storage(chain.local_name)
    with pytest.raises(cacheme.StorageNotRegistered):
        cacheme.bus_health(chain.shared)
    assert chain.local.bus_hub is None


async def test_configuration_errors(tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    with pytest.raises(cacheme.StorageConfigError, match="only a local storage listens on a bus"):
        cacheme.Storage("redis://127.0.0.1:6379/0", bus="anything")
    with pytest.raises(cacheme.StorageConfigError, match="must be the name of a registered storage"):
        cacheme.Storage("local://lru", size=10, bus="")
    with pytest.raises(cacheme.StorageConfigError, match="is not registered"):
        await cacheme.register_storage(
            f"l-{suffix}", cacheme.Storage("local://lru", size=10, bus=f"none-{suffix}")
        )
    sqlite = f"sqlite-{suffix}"
    await cacheme.register_storage(
        sqlite, cacheme.Storage(f"sqlite:///{tmp_path}/bus.db", sweep_interval=None)
    )
    try:
        with pytest.raises(cacheme.StorageConfigError, match="cannot carry an invalidation bus"):
            await cacheme.register_storage(f"l-{suffix}", cacheme.Storage("local://lru", size=10, bus=sqlite))
        assert f"l-{suffix}" not in cacheme.registered_storages()
    finally:
        await cacheme.unregister_storage(sqlite)
    # A local storage that cannot be emptied cannot listen: it could not forget what a lost bus missed.
    shared = f"shared-{suffix}"
    await cacheme.register_storage(shared, cacheme.Storage(f"redis://{SHARED_HOST}:{SHARED_PORT}/0"))
    try:
        plain = Unclearable("local://plain")
        plain.bus_name = shared
        with pytest.raises(cacheme.StorageConfigError, match="clear_sync"):
            await cacheme.register_storage(f"l-{suffix}", plain)
    finally:
        await cacheme.unregister_storage(shared)


class Unclearable(cacheme.LocalStorage):
    """A local storage of a third party, without clear_sync."""

    def get_sync(self, key: str) -> Any:
        return MISSING

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        return None

    def delete_sync(self, key: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_every_event_loop_of_the_process_is_covered(bound: tuple[BoundChain, TcpProxy]) -> None:
    # Two more loops in threads (one ended before the message comes): the bus thread serves them all.
    chain, _ = bound
    node = chain.node_class(id=7)

    def in_a_thread_of_its_own() -> str:
        async def read() -> str:
            value: str = await cacheme.get(node)
            return value

        return asyncio.run(read())

    first = await asyncio.to_thread(in_a_thread_of_its_own)
    assert chain.local.get_sync(node.full_key()) is not MISSING
    with redis.Redis(host=SHARED_HOST, port=SHARED_PORT) as client:
        client.delete(node.full_key())  # what the other process's invalidate did to the shared tier
    publish_from_another_process([node.full_key()])
    await eventually(lambda: chain.local.get_sync(node.full_key()) is MISSING, 2)
    second = await asyncio.to_thread(in_a_thread_of_its_own)
    assert (first, second) == ("7-1", "7-2")
    assert await cacheme.get(node) == "7-2"


def test_a_forked_child_listens_by_itself(tmp_path: Path) -> None:
    # Pre-forking servers register at start-up, then fork their workers: the bus thread does not
    # come along, so the child starts one of its own, its local storages emptied.
    prefix = f"forked-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, "-m", "tests.fleet.forked", prefix],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    with redis.Redis(host=SHARED_HOST, port=SHARED_PORT) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    assert done.stdout.splitlines() == [
        "child: local held the key after the fork: False",
        "child: subscribed, stored, dropped",
        "parent: child exited 0",
    ], done.stdout + done.stderr
