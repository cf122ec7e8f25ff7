"""Leases (``Meta.lease``) in one process, on a real Redis server and a real Redis Cluster.

The other members of the fleet are played by a plain redis-py client: it holds a lease by
writing a mark into the key (as ``RedisLeases.acquire`` does), writes the value, and
PUBLISHes the notice, as another process would. Fleets of real processes are in
tests/fleet/test_leases.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

import pytest
import pytest_asyncio
import redis

import cacheme
from cacheme.entry import LEASE_MARK, Entry, pack, unpack
from cacheme_redis.lease import CHANNEL, RedisLeases
from cacheme_redis.storage import RedisStorage
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT, RedisClusterProcesses
from tests.waiting import flights_done

LEASE = timedelta(seconds=10)


@dataclass
class Fleet:
    """The storages of one test, and a client of the lease server that plays the other processes."""

    local: str
    shared: str
    prefix: str
    other: redis.Redis | redis.RedisCluster

    def hold(self, key: str, ms: int = 10_000) -> bytes:
        """Take the lease of ``key`` as another process would; its mark."""
        mark = LEASE_MARK + uuid.uuid4().bytes
        assert self.other.set(key, mark, px=ms, nx=True)
        return mark

    def publish_notice(self, keys: list[str]) -> None:
        self.other.publish(CHANNEL, json.dumps({"v": 1, "from": "another-process", "keys": keys}))

    def raw(self, key: str) -> bytes | None:
        value = self.other.get(key)
        assert value is None or isinstance(value, bytes)
        return value


def lease_node(fleet: Fleet, lease: timedelta | None = LEASE) -> Any:
    """A node class with the chain [local, shared] and ``Meta.lease``; its load waits for ``gate``
    when one is set, counts itself, and returns ``f"{id}-{load number}"``."""

    class Value(cacheme.Node):
        id: int
        loads: ClassVar[int] = 0
        batches: ClassVar[list[list[int]]] = []
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


async def _fleet(url: str, other: redis.Redis | redis.RedisCluster, **options: Any) -> AsyncIterator[Fleet]:
    suffix = uuid.uuid4().hex[:10]
    local, shared, prefix = f"local-{suffix}", f"shared-{suffix}", f"lease-test-{suffix}"
    await cacheme.register_storage(shared, cacheme.Storage(url, **options))
    await cacheme.register_storage(local, cacheme.Storage("local://lru", size=1000))
    cacheme.set_prefix(prefix)
    try:
        yield Fleet(local, shared, prefix, other)
    finally:
        cacheme.set_prefix("cacheme")
        for name in (local, shared):
            if name in cacheme.registered_storages():
                await cacheme.unregister_storage(name)
        if isinstance(other, redis.RedisCluster):
            keys = list(other.scan_iter(match=f"{prefix}:*", target_nodes=redis.RedisCluster.ALL_NODES))
            for key in keys:
                other.delete(key)
        else:
            keys = list(other.scan_iter(match=f"{prefix}:*"))
            if keys:
                other.delete(*keys)
        other.close()


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


@pytest_asyncio.fixture
async def fleet(lease_server: tuple[str, dict[str, Any], Callable[[], Any]]) -> AsyncIterator[Fleet]:
    url, options, client = lease_server
    async for made in _fleet(url, client(), **options):
        yield made


def value_of(raw: bytes | None) -> bytes | None:
    """The serialized value behind an entry's header (None: absent)."""
    return None if raw is None else unpack(raw)[3]


async def eventually(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- the protocol, on the server


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
        written = await leases.write({key: b"loaded" for key in keys[2:6] + keys[:1]}, first, 60_000)
        assert written == 3  # keys[0], keys[4], keys[5]
        assert other.get(keys[0]) == b"loaded" and 55_000 < other.pttl(keys[0]) <= 60_000
        assert other.get(keys[2]) is None and other.get(keys[3]) == b"refreshed"
        assert await leases.write({keys[6]: b"forever"}, first, None) == 1
        assert other.pttl(keys[6]) == -1
        # A release deletes only the key's own mark.
        await leases.release({keys[7]: first[keys[7]], keys[8]: LEASE_MARK + b"another's mark!!"})
        assert other.get(keys[7]) is None and other.get(keys[8]) == first[keys[8]]
    finally:
        for key in keys:
            other.delete(key)
        other.close()
        await storage.close()


# ---------------------------------------------------------------- one process among others


async def test_a_key_another_process_holds_is_answered_by_its_notice_without_a_load(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    node = kind(id=1)
    key = node.full_key()
    fleet.hold(key)  # another process loads it, for up to 10 s
    started = time.monotonic()
    waiting = asyncio.gather(*(cacheme.get(kind(id=1)) for _ in range(500)))
    await eventually(lambda: cacheme.stats(kind).lease_wait_count() == 1, 2)
    await asyncio.sleep(0.2)
    assert not waiting.done()
    # The other process writes its value (a cacheme entry) and sends the notice.
    fleet.other.set(key, pack(Entry("theirs", time.time(), 0.1, None), None, b"\xa6theirs"))
    fleet.publish_notice([key])
    values = await asyncio.wait_for(waiting, 2)
    assert values == ["theirs"] * 500
    assert time.monotonic() - started < 2  # not the lease's 10 s
    stats = cacheme.stats(kind)
    assert (kind.loads, stats.lease_count(), stats.lease_wait_count(), stats.hit_count()) == (0, 0, 1, 500)
    assert await cacheme.get(kind(id=1)) == "theirs"  # written into the local tier too


async def test_the_lease_of_a_holder_that_died_is_taken_over_when_it_expires(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    key = kind(id=2).full_key()
    fleet.hold(key, ms=400)  # a holder killed mid-load: no value, no notice
    started = time.monotonic()
    values = await asyncio.gather(*(cacheme.get(kind(id=2)) for _ in range(100)))
    took = time.monotonic() - started
    assert values == ["2-1"] * 100
    assert 0.35 < took < 1.5
    stats = cacheme.stats(kind)
    assert (kind.loads, stats.lease_count(), stats.lease_wait_count()) == (1, 1, 1)
    assert await flights_done()
    assert value_of(fleet.raw(key)) is not None and not fleet.raw(
        key,
    ).startswith(LEASE_MARK)  # type: ignore[union-attr]


async def test_the_holder_writes_and_notifies_and_leaves_no_mark(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    pubsub = fleet.other.pubsub() if isinstance(fleet.other, redis.Redis) else None  # type: ignore[no-untyped-call]
    if pubsub is not None:
        pubsub.subscribe(CHANNEL)
        assert pubsub.get_message(timeout=2) is not None  # the subscription's confirmation
    assert await cacheme.get(kind(id=3)) == "3-1"
    assert await flights_done()
    raw = fleet.raw(kind(id=3).full_key())
    assert raw is not None and not raw.startswith(LEASE_MARK)
    assert cacheme.stats(kind).lease_count() == 1
    if pubsub is not None:
        notice = pubsub.get_message(timeout=2)
        assert notice is not None and json.loads(notice["data"])["keys"] == [kind(id=3).full_key()]
        pubsub.close()


async def test_a_value_deleted_during_the_load_is_not_written_back(fleet: Fleet) -> None:
    # Another process's invalidate deletes the key, and the lease with it: the fence refuses the write.
    kind = lease_node(fleet)
    kind.gate, kind.started = asyncio.Event(), asyncio.Event()
    node = kind(id=4)
    getting = asyncio.ensure_future(cacheme.get(node))
    await asyncio.wait_for(kind.started.wait(), 2)
    assert (fleet.raw(node.full_key()) or b"").startswith(LEASE_MARK)
    fleet.other.delete(node.full_key())
    kind.gate.set()
    assert await getting == "4-1"  # the callers get what was loaded
    assert await flights_done()
    assert fleet.raw(node.full_key()) is None
    assert cacheme.stats(kind).lease_fenced_count() == 1


async def test_a_value_refreshed_during_the_load_is_not_overwritten(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    kind.gate, kind.started = asyncio.Event(), asyncio.Event()
    node = kind(id=5)
    getting = asyncio.ensure_future(cacheme.get(node))
    await asyncio.wait_for(kind.started.wait(), 2)
    fleet.other.set(node.full_key(), b"newer, from another process's refresh")
    kind.gate.set()
    await getting
    assert await flights_done()
    assert fleet.raw(node.full_key()) == b"newer, from another process's refresh"
    assert cacheme.stats(kind).lease_fenced_count() == 1


async def test_a_failed_load_gives_the_lease_back_and_fails_its_callers(fleet: Fleet) -> None:
    kind = lease_node(fleet)
    kind.fail = True
    with pytest.raises(LookupError):
        await cacheme.get(kind(id=6))
    assert await flights_done()
    assert fleet.raw(kind(id=6).full_key()) is None  # no mark left for the others to wait on
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
    assert fleet.raw(node.full_key()) is None
    assert await cacheme.get(kind(id=7)) == "7-2"


async def test_get_all_loads_what_it_leased_in_one_batch_and_waits_for_the_rest(fleet: Fleet) -> None:
    kind = batch_node(fleet)
    nodes = [kind(id=i) for i in range(30)]
    fleet.other.set(nodes[0].full_key(), pack(Entry("present", time.time(), 0.0, None), None, b"\xa7present"))
    fleet.hold(nodes[1].full_key())
    fleet.hold(nodes[2].full_key())
    getting = asyncio.ensure_future(cacheme.get_all([*nodes, nodes[3], nodes[1]]))
    await eventually(lambda: len(kind.batches) == 1, 2)
    assert sorted(kind.batches[0]) == list(range(3, 30))  # one load_all for the leased keys
    await asyncio.sleep(0.1)
    assert not getting.done()  # keys 1 and 2 are another process's
    fleet.other.set(nodes[1].full_key(), pack(Entry("one", time.time(), 0.0, None), None, b"\xa3one"))
    fleet.other.delete(nodes[2].full_key())  # its holder failed and gave the lease back
    fleet.publish_notice([nodes[1].full_key(), nodes[2].full_key()])
    values = await asyncio.wait_for(getting, 2)
    assert values == ["present", "one", "batch-2", *[f"batch-{i}" for i in range(3, 30)], "batch-3", "one"]
    assert kind.batches[1:] == [[2]]  # key 2's lease, taken over by this process
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
    fleet.hold(kind(id=9).full_key())
    assert await cacheme.get(kind(id=9)) == "9-1"  # no wait: this node takes no leases
    assert cacheme.stats(kind).storage_error_count() == 0


# ---------------------------------------------------------------- a failing lease tier


@pytest_asyncio.fixture
async def proxied(tcp_proxy: Callable[[str, int], TcpProxy]) -> AsyncIterator[tuple[Fleet, TcpProxy]]:
    proxy = tcp_proxy(SHARED_HOST, SHARED_PORT)
    health = cacheme.Health(read_timeout=0.2, write_timeout=0.3, failures=3, window=10.0, cool_down=0.5)
    async for made in _fleet(
        proxy.url("redis", "/0"), redis.Redis(host=SHARED_HOST, port=SHARED_PORT), health=health
    ):
        yield made, proxy


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


async def test_leases_take_one_round_trip_for_a_get_all(proxied: tuple[Fleet, TcpProxy]) -> None:
    fleet, proxy = proxied
    kind = batch_node(fleet)
    await cacheme.get_all([kind(id=1000)])  # connections made, notices subscribed
    assert await flights_done()
    proxy.delay(0.05)
    started = time.monotonic()
    values = await cacheme.get_all([kind(id=i) for i in range(100)])
    took = time.monotonic() - started
    assert values == [f"batch-{i}" for i in range(100)]
    # Read, lease, write (and its notice): a few round trips of 0.1 s, not one per key.
    assert took < 0.8, took
    assert cacheme.stats(kind).lease_count() == 101


async def test_a_value_that_cannot_be_written_gives_the_lease_back(fleet: Fleet) -> None:
    kind = lease_node(fleet)

    async def unserializable(node: Any) -> object:
        return object()  # MessagePack cannot write it: the shared tier's write is skipped

    node = kind(id=10)
    assert isinstance(await cacheme.get(node, unserializable), object)
    assert await flights_done()
    assert fleet.raw(node.full_key()) is None  # no mark left for the others to wait on
    assert cacheme.stats(kind).storage_error_count() == 1
