"""``refresh`` and ``invalidate`` win over the reads that race them (issue 10, point 4).

Chain: [local tier, the shared Redis through the tests' TCP proxy]. The
proxy holds Redis's answers long enough for a ``get`` to read the old value
while ``refresh``/``invalidate`` runs. Once either has returned, no tier of
this process may serve the old value: the racing ``get`` must not back-fill
it, and no later request may join the racing ``get``'s read.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pytest
import pytest_asyncio
import redis

import cacheme
from cacheme import singleflight
from cacheme.storage import MISSING
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT

T = TypeVar("T")

# How long the proxy holds an answer of Redis that must arrive after refresh/invalidate returned.
HELD = 0.6
# Gets checked after refresh/invalidate returned, and the pause between them (~1 s in all).
CHECKS = 50
CHECK_INTERVAL = 0.02
TTL = datetime.timedelta(minutes=5)


@dataclass
class SlowChain:
    proxy: TcpProxy
    local: cacheme.LocalStorage
    remote: cacheme.BaseStorage
    caches: list[cacheme.Cache]
    database: int


@pytest_asyncio.fixture
async def slow_chain(
    request: pytest.FixtureRequest, redis_shared_db: int, tcp_proxy: Callable[[str, int], TcpProxy]
) -> AsyncIterator[SlowChain]:
    """[local tier, Redis through a proxy], the Redis tier in a database of its own.

    The local tier is local://lru unless the test passes another URL as the fixture's parameter.
    """
    proxy = tcp_proxy(SHARED_HOST, SHARED_PORT)
    local = cacheme.Storage(getattr(request, "param", "local://lru"), size=1000)
    # Redis is made slower than the default read deadline on purpose (to hold the race open): no deadline.
    remote = cacheme.Storage(proxy.url("redis", f"/{redis_shared_db}"), health=cacheme.Health.off())
    assert isinstance(local, cacheme.LocalStorage)
    await cacheme.register_storage("race-local", local)
    await cacheme.register_storage("race-redis", remote)
    try:
        yield SlowChain(
            proxy, local, remote, [cacheme.Cache("race-local", TTL), cacheme.Cache("race-redis", TTL)],
            redis_shared_db,
        )  # fmt: skip
    finally:
        await cacheme.unregister_storage("race-local")
        await cacheme.unregister_storage("race-redis")


def versioned_node(caches: list[cacheme.Cache]) -> Any:
    """A node whose source answers ``Versioned.source``, once ``Versioned.gate`` is open."""

    class Versioned(cacheme.Node):
        id: int
        source: ClassVar[str] = "old"
        loads: ClassVar[int] = 0
        gate: ClassVar[asyncio.Event]

        def key(self) -> str:
            return f"versioned:{self.id}"

        async def load(self) -> str:
            Versioned.loads += 1
            await Versioned.gate.wait()
            return Versioned.source

        class Meta(cacheme.Node.Meta):
            version = "v1"

    Versioned.Meta.caches = caches
    Versioned.gate = asyncio.Event()
    Versioned.gate.set()
    return Versioned


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.002)


async def old_value_in_redis_only(chain: SlowChain, node: cacheme.Node) -> None:
    """Cache "old" through the engine, then drop it from the local tier."""
    assert await cacheme.get(node) == "old"
    await wait_until(lambda: singleflight.in_flight_count() == 0, "the write-back ended")
    chain.local.delete_sync(node.full_key())
    with redis.Redis(host=SHARED_HOST, port=SHARED_PORT, db=chain.database) as direct:
        assert direct.exists(node.full_key())


async def hold_a_read(chain: SlowChain, read: Callable[[], asyncio.Future[Any]]) -> asyncio.Future[Any]:
    """Start ``read`` (a get) and return once Redis has answered it; the proxy holds that answer ``HELD``
    seconds while everything after goes through at once."""
    chain.proxy.delay(HELD)
    answered = chain.proxy.bytes_from_target
    reader = read()
    await wait_until(lambda: chain.proxy.bytes_from_target > answered, "Redis answered the read")
    chain.proxy.pass_through()
    return reader


async def only_new_from_now_on(
    chain: SlowChain, node: cacheme.Node, get: Callable[[], Any], local_tier: bool = True
) -> None:
    """Every get for about a second answers "new", and the local tier (if in the chain) holds "new"."""
    for check in range(CHECKS):
        assert await get() == "new", f"get #{check} after the change answered the old value"
        if local_tier:
            held = chain.local.get_sync(node.full_key())
            assert held is not MISSING and held.value == "new", f"the local tier holds {held!r} (#{check})"
        await asyncio.sleep(CHECK_INTERVAL)


@pytest.mark.parametrize("slow_chain", ["local://lru", "local://tlfu"], indirect=True)
async def test_a_get_started_while_refresh_loads_does_not_back_fill_the_old_value(
    slow_chain: SlowChain,
) -> None:
    node_class = versioned_node(slow_chain.caches)
    node = node_class(id=1)
    await old_value_in_redis_only(slow_chain, node)
    slow_chain.proxy.delay(0.2)  # every round trip to Redis takes 0.4 s
    node_class.source = "new"
    node_class.gate.clear()
    refreshing = asyncio.create_task(cacheme.refresh(node))
    await wait_until(lambda: node_class.loads == 2, "refresh is loading")
    sent = slow_chain.proxy.bytes_to_target
    reader = asyncio.create_task(cacheme.get(node))
    await wait_until(lambda: slow_chain.proxy.bytes_to_target > sent, "the get's read reached Redis")
    node_class.gate.set()  # refresh writes "new" while Redis answers the get's read with "old"
    assert await refreshing == "new"
    assert await reader == "old"  # it read Redis before refresh wrote there
    slow_chain.proxy.pass_through()
    await only_new_from_now_on(slow_chain, node, lambda: cacheme.get(node))
    assert node_class.loads == 2


@pytest.mark.parametrize("started", ["before refresh", "while refresh loads"])
async def test_no_get_joins_a_read_of_the_old_value_after_refresh_returned(
    slow_chain: SlowChain, started: str
) -> None:
    node_class = versioned_node(slow_chain.caches)
    node = node_class(id=2)
    await old_value_in_redis_only(slow_chain, node)
    node_class.source = "new"
    refreshing = None
    if started == "while refresh loads":
        node_class.gate.clear()
        refreshing = asyncio.create_task(cacheme.refresh(node))
        await wait_until(lambda: node_class.loads == 2, "refresh is loading")
    reader = await hold_a_read(slow_chain, lambda: asyncio.ensure_future(cacheme.get(node)))
    if refreshing is None:
        refreshing = asyncio.create_task(cacheme.refresh(node))
    node_class.gate.set()
    assert await refreshing == "new"
    assert not reader.done()  # its answer ("old") is still held by the proxy
    await only_new_from_now_on(slow_chain, node, lambda: cacheme.get(node))
    assert await reader == "old"
    assert node_class.loads == 2


async def test_without_a_local_tier_no_get_joins_a_read_that_began_before_refresh(
    slow_chain: SlowChain,
) -> None:
    node_class = versioned_node(slow_chain.caches[1:])  # Redis only: a get after refresh meets the flight
    node = node_class(id=5)
    await old_value_in_redis_only(slow_chain, node)
    node_class.source = "new"
    reader = await hold_a_read(slow_chain, lambda: asyncio.ensure_future(cacheme.get(node)))
    assert await cacheme.refresh(node) == "new"
    assert not reader.done()
    await only_new_from_now_on(slow_chain, node, lambda: cacheme.get(node), local_tier=False)
    assert await reader == "old"
    assert node_class.loads == 2


async def test_no_get_joins_a_read_of_the_old_value_after_invalidate_returned(slow_chain: SlowChain) -> None:
    node_class = versioned_node(slow_chain.caches)
    node = node_class(id=3)
    await old_value_in_redis_only(slow_chain, node)
    node_class.source = "new"
    reader = await hold_a_read(slow_chain, lambda: asyncio.ensure_future(cacheme.get(node)))
    await cacheme.invalidate(node)
    assert not reader.done()
    assert await cacheme.get(node) == "new"  # loaded again: not the held read's "old"
    assert node_class.loads == 2
    await wait_until(lambda: singleflight.in_flight_count() == 0, "the write-back ended")
    await only_new_from_now_on(slow_chain, node, lambda: cacheme.get(node))
    assert await reader == "old"
    assert node_class.loads == 2


class OtherLoop:
    """An event loop running in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="other-loop", daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``work`` in the other loop; a future of its result in the calling loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def other_loop() -> Iterator[OtherLoop]:
    other = OtherLoop()
    yield other
    other.close()


@pytest.mark.parametrize("started", ["before refresh", "while refresh loads"])
async def test_refresh_wins_over_a_get_of_another_event_loop(
    slow_chain: SlowChain, other_loop: OtherLoop, started: str
) -> None:
    node_class = versioned_node(slow_chain.caches)
    node = node_class(id=4)
    await old_value_in_redis_only(slow_chain, node)
    node_class.source = "new"
    refreshing = None
    try:
        # The other loop's connection to Redis is made now, so that the first bytes Redis sends it
        # later answer the held read.
        assert await other_loop.run(slow_chain.remote.get("warm-up")) is None
        if started == "while refresh loads":
            node_class.gate.clear()
            refreshing = asyncio.create_task(cacheme.refresh(node))
            await wait_until(lambda: node_class.loads == 2, "refresh is loading")
        reader = await hold_a_read(slow_chain, lambda: other_loop.run(cacheme.get(node)))
        if refreshing is None:
            refreshing = asyncio.create_task(cacheme.refresh(node))
        node_class.gate.set()
        assert await refreshing == "new"
        assert not reader.done()
        assert await other_loop.run(cacheme.get(node)) == "new"
        await only_new_from_now_on(slow_chain, node, lambda: other_loop.run(cacheme.get(node)))
        await only_new_from_now_on(slow_chain, node, lambda: cacheme.get(node))
        assert await reader == "old"
        assert node_class.loads == 2
    finally:
        await other_loop.run(slow_chain.remote.close())
