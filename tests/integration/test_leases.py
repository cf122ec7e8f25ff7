"""Leases (``Meta.lease``) through the engine, in one process, on every backend that holds them:
a Redis server, a Redis Cluster and PostgreSQL.

The other members of the fleet are played by a raw client of the lease tier (``Other``): it
holds a lease by writing a mark into the key (as the backends' ``acquire`` does), writes
values, deletes keys and sends notices on the leases' channel, as another process would.
Each backend's own protocol tests are in tests/redis/test_leases.py and
tests/sql/test_postgresql_leases.py; fleets of real processes in tests/fleet/test_leases.py.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis.asyncio

import cacheme
from cacheme.bus import decode
from cacheme.entry import LEASE_MARK, Entry, pack, unpack
from cacheme_redis.lease import CHANNEL as REDIS_CHANNEL
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT, RedisClusterProcesses
from tests.fixtures.sql_servers import POSTGRES_URL, drop_table, raw_postgres
from tests.sql.support import LeaseTable, fresh_table
from tests.waiting import flights_done

LEASE = timedelta(seconds=10)


class Other(abc.ABC):
    """Another process of the fleet, as the lease tier sees it."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, expire_ms: int | None = None) -> None: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def raw(self, key: str) -> bytes | None:
        """What the tier holds for ``key`` (None: absent or expired)."""

    @abc.abstractmethod
    async def publish_notice(self, keys: list[str]) -> None: ...

    @abc.abstractmethod
    def notices(self) -> contextlib.AbstractAsyncContextManager[asyncio.Queue[bytes]]:
        """The notices sent on the leases' channel while the context is open."""

    async def hold(self, key: str, ms: int = 10_000) -> bytes:
        """Take the lease of ``key`` as another process would; its mark."""
        mark = LEASE_MARK + uuid.uuid4().bytes
        await self.put(key, mark, ms)
        return mark

    async def close(self) -> None:
        return None


def notice(keys: list[str]) -> str:
    return json.dumps({"v": 1, "from": "another-process", "keys": keys})


class RedisOther(Other):
    def __init__(
        self, client: redis.asyncio.Redis | redis.asyncio.RedisCluster, url: str, prefix: str
    ) -> None:
        self.client = client
        self.url = url  # a server (of the cluster) to subscribe on: a cluster delivers every PUBLISH
        self.prefix = prefix

    async def put(self, key: str, value: bytes, expire_ms: int | None = None) -> None:
        await self.client.set(key, value, px=expire_ms)

    async def delete(self, key: str) -> None:
        await self.client.delete(key)

    async def raw(self, key: str) -> bytes | None:
        value = await self.client.get(key)
        assert value is None or isinstance(value, bytes)
        return value

    async def publish_notice(self, keys: list[str]) -> None:
        await self.client.publish(REDIS_CHANNEL, notice(keys))

    @contextlib.asynccontextmanager
    async def notices(self) -> AsyncIterator[asyncio.Queue[bytes]]:
        heard: asyncio.Queue[bytes] = asyncio.Queue()
        subscriber = redis.asyncio.Redis.from_url(self.url)
        pubsub = subscriber.pubsub()
        await pubsub.subscribe(REDIS_CHANNEL)
        assert await pubsub.get_message(timeout=2) is not None  # the subscription's confirmation

        async def receive() -> None:
            while True:
                message = await pubsub.get_message(timeout=1)
                if message is not None and message["type"] == "message":
                    heard.put_nowait(message["data"])

        receiving = asyncio.ensure_future(receive())
        try:
            yield heard
        finally:
            receiving.cancel()
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await subscriber.aclose()

    async def close(self) -> None:
        client = self.client
        if isinstance(client, redis.asyncio.RedisCluster):
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
            for key in keys:
                await client.delete(key)
        else:
            keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
            if keys:
                await client.delete(*keys)
        await client.aclose()


class PostgresOther(LeaseTable, Other):
    """One test's cache table, read and written by a raw connection."""

    @contextlib.asynccontextmanager
    async def notices(self) -> AsyncIterator[asyncio.Queue[bytes]]:
        heard: asyncio.Queue[bytes] = asyncio.Queue()
        listener = await raw_postgres()
        try:
            await listener.add_listener(self.channel, lambda *args: heard.put_nowait(args[3].encode()))
            yield heard
        finally:
            await listener.close()

    async def close(self) -> None:
        await self.connection.close()
        await drop_table(POSTGRES_URL, self.table)


@dataclass
class Fleet:
    """The storages of one test (registered) and the other process."""

    local: str
    shared: str
    other: Other


@dataclass
class Backend:
    """How a test reaches one backend: the storage's URL and options, and the other process."""

    kind: str
    url: str
    options: dict[str, Any]
    prefix: str
    other: Other

    def storage(self, url: str | None = None, **options: Any) -> cacheme.BaseStorage:
        return cacheme.Storage(url or self.url, **{**self.options, **options})


@contextlib.asynccontextmanager
async def reach(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """The backend ``kind`` for one test: a key prefix (Redis) or a table (PostgreSQL) of its own."""
    prefix = f"lease-test-{uuid.uuid4().hex[:10]}"
    made: Backend
    if kind == "redis":
        url = f"redis://{SHARED_HOST}:{SHARED_PORT}/0"
        made = Backend(kind, url, {}, prefix, RedisOther(redis.asyncio.Redis.from_url(url), url, prefix))
    elif kind == "redis-cluster":
        cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
        client = redis.asyncio.RedisCluster.from_url(cluster.url)
        made = Backend(kind, cluster.url, {"cluster": True}, prefix, RedisOther(client, cluster.url, prefix))
    else:
        table = fresh_table("lease")
        storage = cacheme.Storage(POSTGRES_URL, table=table, create_table=True)
        await storage.connect()  # creates the table
        await storage.close()
        other = PostgresOther(table, await raw_postgres())
        made = Backend(kind, POSTGRES_URL, {"table": table, "sweep_interval": None}, prefix, other)
    try:
        yield made
    finally:
        await made.other.close()


@pytest_asyncio.fixture(params=["redis", "redis-cluster", "postgresql"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with reach(request.param, request) as made:
        yield made


async def _fleet(backend: Backend, storage: cacheme.BaseStorage) -> AsyncIterator[Fleet]:
    suffix = uuid.uuid4().hex[:10]
    local, shared = f"local-{suffix}", f"shared-{suffix}"
    await cacheme.register_storage(shared, storage)
    await cacheme.register_storage(local, cacheme.Storage("local://lru", size=1000))
    cacheme.set_prefix(backend.prefix)
    try:
        yield Fleet(local, shared, backend.other)
    finally:
        cacheme.set_prefix("cacheme")
        for name in (local, shared):
            if name in cacheme.registered_storages():
                await cacheme.unregister_storage(name)


@pytest_asyncio.fixture
async def fleet(backend: Backend) -> AsyncIterator[Fleet]:
    async for made in _fleet(backend, backend.storage()):
        yield made


def lease_node(fleet: Fleet, lease: timedelta | None = LEASE) -> Any:
    """A node class with the chain [local, shared] and ``Meta.lease``; its load waits for ``gate``
    when one is set, counts itself, and returns ``f"{id}-{load number}"``."""

    class Value(cacheme.Node):
        id: int
        loads: ClassVar[int] = 0
        gate: ClassVar[asyncio.Event | None] = None
        started: ClassVar[asyncio.Event | None] = None
        fail: ClassVar[bool] = False

        def key(self) -> str:
            return f"value:{self.id}"

        async def load(self) -> str:
            Value.loads += 1
            number = Value.loads
            if Value.started is not None:
                Value.started.set()
            if Value.gate is not None:
                await Value.gate.wait()
            if Value.fail:
                raise LookupError(f"no value {self.id}")
            return f"{self.id}-{number}"

        class Meta(cacheme.Node.Meta):
            version = "v1"

    Value.Meta.caches = [
        cacheme.Cache(fleet.local, timedelta(seconds=60)),
        cacheme.Cache(fleet.shared, timedelta(seconds=60)),
    ]
    Value.Meta.lease = lease
    return Value


def batch_node(fleet: Fleet) -> Any:
    """A node class with its own ``load_all`` (which records each batch), under a lease."""

    class Batched(cacheme.Node):
        id: int
        batches: ClassVar[list[list[int]]] = []

        def key(self) -> str:
            return f"batched:{self.id}"

        async def load(self) -> str:
            raise AssertionError("loaded through load_all")

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node[Any]]) -> list[str]:
            ids = [node.id for node in nodes]  # type: ignore[attr-defined]
            Batched.batches.append(ids)
            return [f"batch-{i}" for i in ids]

        class Meta(cacheme.Node.Meta):
            version = "v1"

    Batched.Meta.caches = [
        cacheme.Cache(fleet.local, timedelta(seconds=60)),
        cacheme.Cache(fleet.shared, timedelta(seconds=60)),
    ]
    Batched.Meta.lease = LEASE
    return Batched


def entry(value: str) -> bytes:
    """A cacheme entry of the short string ``value`` (MessagePack), as another process writes it."""
    body = bytes([0xA0 + len(value)]) + value.encode()
    return pack(Entry(value, time.time(), 0.1, None), None, body)


async def eventually(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- one process among others


async def test_a_key_another_process_holds_is_answered_by_its_notice_without_a_load(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    key = kind(id=1).full_key()
    await fleet.other.hold(key)  # another process loads it, for up to 10 s
    started = time.monotonic()
    waiting = asyncio.gather(*(cacheme.get(kind(id=1)) for _ in range(500)))
    await eventually(lambda: cacheme.stats(kind).lease_wait_count() == 1, 2)
    await asyncio.sleep(0.2)
    assert not waiting.done()
    # The other process writes its value (a cacheme entry) and sends the notice.
    await fleet.other.put(key, entry("theirs"), 60_000)
    await fleet.other.publish_notice([key])
    values = await asyncio.wait_for(waiting, 2)
    assert values == ["theirs"] * 500
    assert time.monotonic() - started < 2  # not the lease's 10 s
    stats = cacheme.stats(kind)
    assert (kind.loads, stats.lease_count(), stats.lease_wait_count(), stats.hit_count()) == (0, 0, 1, 500)
    assert await cacheme.get(kind(id=1)) == "theirs"  # written into the local tier too


async def test_the_lease_of_a_holder_that_died_is_taken_over_when_it_expires(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    key = kind(id=2).full_key()
    await fleet.other.hold(key, ms=400)  # a holder killed mid-load: no value, no notice
    started = time.monotonic()
    values = await asyncio.gather(*(cacheme.get(kind(id=2)) for _ in range(100)))
    took = time.monotonic() - started
    assert values == ["2-1"] * 100
    assert 0.35 < took < 1.5
    stats = cacheme.stats(kind)
    assert (kind.loads, stats.lease_count(), stats.lease_wait_count()) == (1, 1, 1)
    assert await flights_done()
    raw = await fleet.other.raw(key)
    assert raw is not None and not raw.startswith(LEASE_MARK) and unpack(raw)[3]


async def test_the_holder_writes_and_notifies_and_leaves_no_mark(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    async with fleet.other.notices() as heard:
        assert await cacheme.get(kind(id=3)) == "3-1"
        assert await flights_done()
        raw = await fleet.other.raw(kind(id=3).full_key())
        assert raw is not None and not raw.startswith(LEASE_MARK)
        assert cacheme.stats(kind).lease_count() == 1
        # Other programs on the server may send notices too: the one naming this key.
        key = kind(id=3).full_key()
        while key not in (decode(await asyncio.wait_for(heard.get(), 2))[1] or []):
            pass


async def test_a_value_deleted_during_the_load_is_not_written_back(fleet: Fleet) -> None:
    # Another process's invalidate deletes the key, and the lease with it: the fence refuses the write.
    kind = lease_node(fleet)
    kind.gate, kind.started = asyncio.Event(), asyncio.Event()
    node = kind(id=4)
    getting = asyncio.ensure_future(cacheme.get(node))
    await asyncio.wait_for(kind.started.wait(), 2)
    assert (await fleet.other.raw(node.full_key()) or b"").startswith(LEASE_MARK)
    await fleet.other.delete(node.full_key())
    kind.gate.set()
    assert await getting == "4-1"  # the callers get what was loaded
    assert await flights_done()
    assert await fleet.other.raw(node.full_key()) is None
    assert cacheme.stats(kind).lease_fenced_count() == 1


async def test_a_value_refreshed_during_the_load_is_not_overwritten(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    kind.gate, kind.started = asyncio.Event(), asyncio.Event()
    node = kind(id=5)
    getting = asyncio.ensure_future(cacheme.get(node))
    await asyncio.wait_for(kind.started.wait(), 2)
    await fleet.other.put(node.full_key(), b"newer, from another process's refresh")
    kind.gate.set()
    await getting
    assert await flights_done()
    assert await fleet.other.raw(node.full_key()) == b"newer, from another process's refresh"
    assert cacheme.stats(kind).lease_fenced_count() == 1


async def test_a_failed_load_gives_the_lease_back_and_fails_its_callers(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    kind.fail = True
    with pytest.raises(LookupError):
        await cacheme.get(kind(id=6))
    # The mark was deleted before the callers got the error: nothing left for the others to wait on.
    assert await fleet.other.raw(kind(id=6).full_key()) is None
    kind.fail = False
    assert await cacheme.get(kind(id=6)) == "6-2"
    assert cacheme.stats(kind).lease_count() == 2


async def test_an_invalidate_in_this_process_during_the_load_gives_the_lease_back(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    kind.gate, kind.started = asyncio.Event(), asyncio.Event()
    node = kind(id=7)
    getting = asyncio.ensure_future(cacheme.get(node))
    await asyncio.wait_for(kind.started.wait(), 2)
    await cacheme.invalidate(kind(id=7))
    kind.gate.set()
    assert await getting == "7-1"
    assert await flights_done()
    assert await fleet.other.raw(node.full_key()) is None
    assert await cacheme.get(kind(id=7)) == "7-2"


async def test_a_value_that_cannot_be_written_gives_the_lease_back(fleet: Fleet) -> None:
    kind = lease_node(fleet)

    async def unserializable(node: Any) -> object:
        return object()  # MessagePack cannot write it: the shared tier's write is skipped

    node = kind(id=10)
    assert isinstance(await cacheme.get(node, unserializable), object)
    assert await flights_done()
    assert await fleet.other.raw(node.full_key()) is None  # no mark left for the others to wait on
    assert cacheme.stats(kind).storage_error_count() == 1


async def test_get_all_loads_what_it_leased_in_one_batch_and_waits_for_the_rest(fleet: Fleet) -> None:
    kind = batch_node(fleet)
    nodes = [kind(id=i) for i in range(30)]
    await fleet.other.put(nodes[0].full_key(), entry("present"))
    await fleet.other.hold(nodes[1].full_key())
    await fleet.other.hold(nodes[2].full_key())
    getting = asyncio.ensure_future(cacheme.get_all([*nodes, nodes[3], nodes[1]]))
    await eventually(lambda: len(kind.batches) == 1, 2)
    assert sorted(kind.batches[0]) == list(range(3, 30))  # one load_all for the leased keys
    await asyncio.sleep(0.1)
    assert not getting.done()  # keys 1 and 2 are another process's
    await fleet.other.put(nodes[1].full_key(), entry("one"))
    await fleet.other.delete(nodes[2].full_key())  # its holder failed and gave the lease back
    await fleet.other.publish_notice([nodes[1].full_key(), nodes[2].full_key()])
    values = await asyncio.wait_for(getting, 2)
    assert values == ["present", "one", "batch-2", *[f"batch-{i}" for i in range(3, 30)], "batch-3", "one"]
    assert kind.batches[1:] == [[2]]  # key 2's lease, taken over by this process, loaded with load_all
    stats = cacheme.stats(kind)
    assert (stats.lease_count(), stats.lease_wait_count()) == (28, 2)


async def test_leases_in_two_event_loops_of_one_process_load_once(fleet: Fleet) -> None:
    kind = lease_node(fleet)

    async def slow_load(node: Any) -> str:
        await asyncio.sleep(0.3)
        kind.loads += 1
        return f"shared-{kind.loads}"

    results: list[Any] = []

    def in_a_thread() -> None:
        async def main() -> list[str]:
            return list(await asyncio.gather(*(cacheme.get(kind(id=8), slow_load) for _ in range(50))))

        results.append(asyncio.run(main()))

    threads = [threading.Thread(target=in_a_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    mine = await asyncio.gather(*(cacheme.get(kind(id=8), slow_load) for _ in range(50)))
    for thread in threads:
        await asyncio.to_thread(thread.join, 10)
    assert kind.loads == 1
    assert mine == ["shared-1"] * 50 and results == [["shared-1"] * 50] * 2


async def test_a_mark_read_by_a_node_without_leases_is_a_quiet_miss(fleet: Fleet) -> None:
    kind = lease_node(fleet, lease=None)
    await fleet.other.hold(kind(id=9).full_key())
    assert await cacheme.get(kind(id=9)) == "9-1"  # no wait: this node takes no leases
    assert cacheme.stats(kind).storage_error_count() == 0


# ---------------------------------------------------------------- a failing lease tier (behind a proxy)


@contextlib.asynccontextmanager
async def behind_a_proxy(
    backend: Backend, tcp_proxy: Callable[[str, int], TcpProxy], read_timeout: float
) -> AsyncIterator[tuple[Fleet, TcpProxy]]:
    """The test's storages, the lease tier's connections (its listener's too) through a proxy."""
    health = cacheme.Health(
        read_timeout=read_timeout, write_timeout=read_timeout + 0.1, failures=3, window=10.0, cool_down=0.5
    )
    parts = urlsplit(backend.url)
    proxy = tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 0)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    options: dict[str, Any] = {"health": health}
    if backend.kind == "postgresql":
        options["command_timeout"] = 0.5  # bounds the closing of a pool whose connections were blackholed
    try:
        async for made in _fleet(backend, backend.storage(parts._replace(netloc=netloc).geturl(), **options)):
            yield made, proxy
            proxy.pass_through()
    finally:
        proxy.pass_through()


# A cluster's clients follow the addresses its nodes announce, past any proxy: a server and PostgreSQL.
@pytest_asyncio.fixture(params=["redis", "postgresql"])
async def proxied(
    request: pytest.FixtureRequest, tcp_proxy: Callable[[str, int], TcpProxy]
) -> AsyncIterator[tuple[Fleet, TcpProxy]]:
    async with reach(request.param, request) as backend, behind_a_proxy(backend, tcp_proxy, 0.2) as made:
        yield made


@pytest_asyncio.fixture(params=["redis", "postgresql"])
async def patient_proxied(
    request: pytest.FixtureRequest, tcp_proxy: Callable[[str, int], TcpProxy]
) -> AsyncIterator[tuple[Fleet, TcpProxy]]:
    async with reach(request.param, request) as backend, behind_a_proxy(backend, tcp_proxy, 2.0) as made:
        yield made


async def test_a_blackholed_lease_tier_fails_open_each_request_bounded(
    proxied: tuple[Fleet, TcpProxy],
) -> None:
    fleet, proxy = proxied
    kind = lease_node(fleet)
    proxy.blackhole()
    started = time.monotonic()
    for i in range(5):
        assert await cacheme.get(kind(id=100 + i)) == f"{100 + i}-{i + 1}"
    assert time.monotonic() - started < 3  # each read and lease bounded by 0.2 s, then the breaker
    stats = cacheme.stats(kind)
    assert stats.lease_fail_open_count() >= 1 and stats.lease_count() == 0
    assert cacheme.storage_health(fleet.shared).state != "closed"


async def test_leases_take_one_round_trip_for_a_get_all(patient_proxied: tuple[Fleet, TcpProxy]) -> None:
    fleet, proxy = patient_proxied
    kind = batch_node(fleet)
    # Connections made, statements prepared, notices subscribed.
    await cacheme.get_all([kind(id=1000), kind(id=1001)])
    assert await flights_done()
    proxy.delay(0.05)
    started = time.monotonic()
    values = await cacheme.get_all([kind(id=i) for i in range(100)])
    took = time.monotonic() - started
    assert values == [f"batch-{i}" for i in range(100)]
    # Read, lease, write, notice: a few round trips of 0.1 s (PostgreSQL's pool adds a reset to
    # each), not one per key.
    assert took < 1.0, took
    assert await flights_done()
    assert cacheme.stats(kind).lease_count() == 102
