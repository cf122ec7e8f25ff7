"""Issue 11: deadlines and the circuit breaker against real faults.

A TCP proxy of the tests' own (tests/fixtures/proxy.py) sits in front of the
real Redis and the real PostgreSQL and blackholes (accepts, never answers) or
resets their traffic; a node of the tests' Redis Cluster is paused with
SIGSTOP. In every case: no caller gets an error, each request is answered
within about the read deadline, the breaker opens and then skips the storage
with no I/O, and after the fault heals one probe closes it and hits resume.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio

import cacheme
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.sql_servers import POSTGRES_URL, drop_table
from tests.waiting import flights_done

READ_TIMEOUT = 0.2
WRITE_TIMEOUT = 0.5
HEALTH = cacheme.Health(
    read_timeout=READ_TIMEOUT, write_timeout=WRITE_TIMEOUT, failures=3, window=10.0, cool_down=0.5
)
LOAD_SECONDS = 0.005  # the source answers in 5 ms
SCHEDULING_MARGIN = 0.3  # seconds of loop work allowed on top of the deadlines


@dataclass
class Tier:
    name: str
    node: Any  # the node class cached there


def node_class(storage_name: str) -> Any:
    class FaultNode(cacheme.Node):
        number: int

        def key(self) -> str:
            return f"fault:{self.number}"

        async def load(self) -> int:
            await asyncio.sleep(LOAD_SECONDS)
            return self.number * 3

        class Meta(cacheme.Node.Meta):
            version = uuid.uuid4().hex[:8]
            caches = [cacheme.Cache(storage=storage_name, ttl=timedelta(minutes=5))]

    return FaultNode


async def timed_gets(node: Any, numbers: range) -> list[float]:
    """Get every number concurrently; assert each value; return each get's latency in seconds."""

    async def one(number: int) -> float:
        started = time.perf_counter()
        assert await cacheme.get(node(number=number)) == number * 3
        return time.perf_counter() - started

    return list(await asyncio.gather(*(one(number) for number in numbers)))


async def wait_for_state(name: str, state: str, timeout: float, poke: Callable[[], Any]) -> float:
    """Seconds until the breaker of ``name`` is in ``state``, calling ``poke()`` meanwhile (traffic)."""
    started = time.perf_counter()
    while cacheme.storage_health(name).state != state:
        assert time.perf_counter() - started < timeout, f"{name} never became {state}"
        await poke()
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def check_outage_and_recovery(
    tier: Tier, fault: Callable[[], None], heal: Callable[[], None], recovery: float = HEALTH.cool_down + 2.0
) -> None:
    """Normal traffic, the fault, the breaker open, the heal, the breaker closed (within ``recovery``)."""
    node, name = tier.node, tier.name
    # Normal: 200 keys loaded and written, then answered by the storage.
    await timed_gets(node, range(200))
    await flights_done()
    hits = cacheme.stats(node).hit_count()
    await timed_gets(node, range(200))
    assert cacheme.stats(node).hit_count() == hits + 200
    assert cacheme.storage_health(name).state == "closed"

    fault()
    counter = iter(range(10_000, 1_000_000))

    async def traffic() -> None:
        start = next(counter) * 100
        latencies = await timed_gets(node, range(start, start + 50))
        # No request waits much longer than the read deadline (plus the write's, for the batch
        # whose write-back fails while the next read waits behind it in the loop), with a margin
        # for the loop's own work on a busy two-core machine: a run in CI took 0.717 s.
        bound = READ_TIMEOUT + WRITE_TIMEOUT + SCHEDULING_MARGIN
        assert max(latencies) < bound, max(latencies)

    opened_after = await wait_for_state(name, "open", 10.0, traffic)
    assert opened_after < 3.0
    # Open: the storage is skipped at once; a get costs its load (5 ms), not a deadline. One at
    # a time, so the figure is a get's own cost, not the loop's time for hundreds at once (at
    # most one of them is the breaker's probe, which waits for the deadline).
    latencies = [
        (await timed_gets(node, range(number, number + 1)))[0] for number in range(2_000_000, 2_000_050)
    ]
    latencies.sort()
    assert latencies[len(latencies) // 2] < READ_TIMEOUT / 2, latencies[len(latencies) // 2]
    assert cacheme.storage_health(name).skipped_count > 0

    heal()
    healed_at = time.perf_counter()
    await wait_for_state(name, "closed", 10.0, traffic)
    assert time.perf_counter() - healed_at < recovery
    await timed_gets(node, range(3_000_000, 3_000_100))
    await flights_done()
    hits = cacheme.stats(node).hit_count()
    await timed_gets(node, range(3_000_000, 3_000_100))
    assert cacheme.stats(node).hit_count() == hits + 100  # caching is back
    assert cacheme.stats(node).load_failure_count() == 0


@pytest_asyncio.fixture
async def registered() -> AsyncIterator[Callable[[cacheme.BaseStorage], Any]]:
    names: list[str] = []

    async def register(storage: cacheme.BaseStorage) -> Tier:
        name = f"fault-{uuid.uuid4().hex[:8]}"
        await cacheme.register_storage(name, storage)
        names.append(name)
        return Tier(name, node_class(name))

    yield register
    for name in names:
        await cacheme.unregister_storage(name)


@pytest.mark.parametrize("fault", ["blackhole", "reset"])
async def test_redis_fault_opens_the_breaker_and_heals(
    fault: str,
    tcp_proxy: Callable[[str, int], TcpProxy],
    redis_shared_db: int,
    registered: Callable[[cacheme.BaseStorage], Any],
) -> None:
    proxy = tcp_proxy("127.0.0.1", 6379)
    tier = await registered(cacheme.Storage(proxy.url("redis", f"/{redis_shared_db}"), health=HEALTH))
    await check_outage_and_recovery(tier, getattr(proxy, fault), proxy.pass_through)


@pytest.mark.parametrize("fault", ["blackhole", "reset"])
async def test_postgresql_fault_opens_the_breaker_and_heals(
    fault: str,
    tcp_proxy: Callable[[str, int], TcpProxy],
    registered: Callable[[cacheme.BaseStorage], Any],
) -> None:
    proxy = tcp_proxy("127.0.0.1", 5432)
    table = f"fault_{uuid.uuid4().hex[:12]}"
    url = POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    storage = cacheme.Storage(
        url, table=table, sweep_interval=None, connect_timeout=2, command_timeout=2, health=HEALTH
    )
    try:
        tier = await registered(storage)
        # A pooled connection whose reply the blackhole swallowed stays busy until asyncpg's
        # command_timeout ends its operation: recovery waits for that, then one probe.
        await check_outage_and_recovery(
            tier, getattr(proxy, fault), proxy.pass_through, recovery=2 + HEALTH.cool_down + 2.0
        )
    finally:
        await drop_table(POSTGRES_URL, table)


async def test_a_paused_cluster_node_opens_the_breaker_and_heals(
    redis_cluster: Any, registered: Callable[[cacheme.BaseStorage], Any]
) -> None:
    redis_cluster.flush()
    tier = await registered(cacheme.Storage(redis_cluster.url, cluster=True, health=HEALTH))
    paused = redis_cluster.masters[1].process
    assert paused is not None
    try:
        await check_outage_and_recovery(
            tier, lambda: os.kill(paused.pid, signal.SIGSTOP), lambda: os.kill(paused.pid, signal.SIGCONT)
        )
    finally:
        os.kill(paused.pid, signal.SIGCONT)
