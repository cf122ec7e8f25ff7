"""Batches that merge while they wait: a slow Redis gets fewer, larger batches, not a queue at its pool.

The server is our own process (so that INFO commandstats counts our commands
only), reached through the tests' TCP proxy, which delays every chunk by
``DELAY`` in each direction: each round trip costs 200 ms more, as with a
Redis that is merely slow. Requests arrive at an even rate, 5,000 over 2 s,
mostly one a loop turn: far more loop turns per round trip than the pool has
connections.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
import redis

from cacheme_redis.commands import MGET_CHUNK
from cacheme_redis.storage import RedisStorage, batches_in_flight
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.redis_servers import RedisServer
from tests.redis.conftest import commandstats

DELAY = 0.1  # per chunk and direction: +200 ms per round trip
POOL_SIZE = 100
POOL_TIMEOUT = 3.0
KEYS = 1000
REQUESTS = 5000
ARRIVALS = 2.0  # seconds over which the requests arrive, evenly


@dataclass
class Run:
    """What a load of calls gave: each call's time, the errors raised, the loop turns they arrived in."""

    turns: int = 0
    timings: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def quantile(self, fraction: float) -> float:
        ordered = sorted(self.timings)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def summary(self, rtt: float, commands: int) -> str:
        return (
            f"rtt={rtt * 1000:.0f}ms p50={self.quantile(0.5) * 1000:.0f}ms "
            f"p95={self.quantile(0.95) * 1000:.0f}ms max={max(self.timings, default=0) * 1000:.0f}ms "
            f"errors={len(self.errors)} turns={self.turns} commands={commands} "
            f"calls/command={len(self.timings) / max(commands, 1):.1f}"
        )


async def arriving(call: Callable[[int], Awaitable[object]], count: int, seconds: float) -> Run:
    """Start ``count`` calls at an even rate over ``seconds``, each loop turn those that are due; time each.

    The loop turns every few microseconds, so a call mostly arrives in a turn of its own:
    ``turns`` counts the turns in which calls arrived.
    """
    loop = asyncio.get_running_loop()
    run = Run()

    async def timed(i: int) -> None:
        start = loop.time()
        try:
            await call(i)
        except Exception as error:
            run.errors.append(error)
        else:
            run.timings.append(loop.time() - start)

    calls: list[asyncio.Future[None]] = []
    begin = loop.time()
    while len(calls) < count:
        due = min(count, 1 + int((loop.time() - begin) / seconds * count))
        if due > len(calls):
            run.turns += 1
            calls += [asyncio.ensure_future(timed(i)) for i in range(len(calls), due)]
        await asyncio.sleep(0)
    await asyncio.gather(*calls)
    return run


async def round_trip(storage: RedisStorage) -> float:
    """The median time of a single get on a warm connection: one round trip through the proxy."""
    loop = asyncio.get_running_loop()
    timings = []
    for _ in range(3):
        start = loop.time()
        await storage.get("k0")
        timings.append(loop.time() - start)
    return statistics.median(timings)


@pytest.fixture
def proxy(server: RedisServer, tcp_proxy: Callable[[str, int], TcpProxy]) -> TcpProxy:
    return tcp_proxy("127.0.0.1", server.port)


async def slow_storage(
    proxy: TcpProxy, control: redis.Redis, pool_size: int = POOL_SIZE
) -> tuple[RedisStorage, float]:
    """A storage through the proxy, its keys written, the delay on, its pool full of open connections;
    and the round trip it now costs."""
    storage = RedisStorage(proxy.url("redis"), pool_size=pool_size, pool_timeout=POOL_TIMEOUT)
    await storage.set_many({f"k{i}": f"v{i}".encode() for i in range(KEYS)}, None)
    proxy.delay(DELAY)
    # Every connection of the pool opened now (PINGs at once, each on a connection of its own): the
    # load meets a warm pool, as in a running service, and no timing below includes a connect.
    client = (await storage._state()).commands.client
    await asyncio.gather(*(client.ping() for _ in range(pool_size)))
    rtt = await round_trip(storage)
    control.config_resetstat()
    return storage, rtt


async def test_reads_queued_behind_a_slow_server_merge(proxy: TcpProxy, control: redis.Redis) -> None:
    storage, rtt = await slow_storage(proxy, control)
    try:
        values: dict[int, bytes | None] = {}

        async def get(i: int) -> None:
            values[i] = await storage.get(f"k{i % KEYS}")

        run = await arriving(get, REQUESTS, ARRIVALS)
        mgets = commandstats(control).get("mget", 0)
        report = run.summary(rtt, mgets)
        assert not run.errors, report
        assert values == {i: f"v{i % KEYS}".encode() for i in range(REQUESTS)}
        assert max(run.timings) < POOL_TIMEOUT, report
        assert run.quantile(0.5) <= 2 * rtt, report
        # One MGET per loop turn would be one per turn with arrivals: batches waiting for Redis merged.
        assert mgets <= run.turns / 3, report
    finally:
        await storage.close()


async def test_keys_per_mget_grow_with_the_backlog(proxy: TcpProxy, control: redis.Redis) -> None:
    # Requests arriving 5 times as fast, still about one a loop turn: the MGETs carry more keys each.
    storage, rtt = await slow_storage(proxy, control)
    try:

        async def get(i: int) -> None:
            await storage.get(f"k{i % KEYS}")

        keys_per_mget = {}
        for count in (REQUESTS // 10, REQUESTS // 2):
            control.config_resetstat()
            run = await arriving(get, count, ARRIVALS / 2)
            mgets = commandstats(control).get("mget", 0)
            assert not run.errors, run.summary(rtt, mgets)
            keys_per_mget[count] = count / mgets
        assert keys_per_mget[REQUESTS // 2] >= 2.5 * keys_per_mget[REQUESTS // 10], keys_per_mget
    finally:
        await storage.close()


async def test_writes_queued_behind_a_slow_server_merge(proxy: TcpProxy, control: redis.Redis) -> None:
    storage, rtt = await slow_storage(proxy, control)
    try:

        async def set_(i: int) -> None:
            await storage.set(f"w{i}", f"x{i}".encode(), None if i % 2 else timedelta(minutes=5))

        run = await arriving(set_, REQUESTS, ARRIVALS)
        stats = commandstats(control)
        # Each write batch holds one MSET (the writes without expiry), the others are SET PX.
        pipelines = stats.get("mset", 0)
        report = run.summary(rtt, pipelines)
        assert not run.errors, report
        assert max(run.timings) < POOL_TIMEOUT, report
        assert run.quantile(0.5) <= 2 * rtt, report
        assert pipelines <= run.turns / 3, report
        assert stats.get("set") == REQUESTS // 2
        written = control.mget([f"w{i}" for i in range(REQUESTS)])
        assert written == [f"x{i}".encode() for i in range(REQUESTS)]
    finally:
        await storage.close()


async def test_a_delete_finds_a_connection_while_batches_wait(proxy: TcpProxy, control: redis.Redis) -> None:
    # Read and write batches in flight never take the whole pool: a delete does not queue behind them.
    storage, rtt = await slow_storage(proxy, control)
    try:

        async def read_and_write(i: int) -> None:
            await asyncio.gather(storage.get(f"k{i % KEYS}"), storage.set(f"w{i}", b"x", None))

        load = asyncio.ensure_future(arriving(read_and_write, REQUESTS // 2, ARRIVALS))
        await asyncio.sleep(ARRIVALS / 2)  # the load is in full swing
        loop = asyncio.get_running_loop()
        start = loop.time()
        await storage.delete("k1")
        took = loop.time() - start
        run = await load
        assert not run.errors, run.summary(rtt, 0)
        assert took <= 2 * rtt, f"a delete took {took * 1000:.0f}ms, rtt {rtt * 1000:.0f}ms"
        assert control.exists("k1") == 0
    finally:
        await storage.close()


async def test_a_request_alone_costs_one_round_trip(proxy: TcpProxy, control: redis.Redis) -> None:
    # Nothing waits, nothing merges: the batch goes out in the next loop turn, as before.
    storage, rtt = await slow_storage(proxy, control)
    try:
        loop = asyncio.get_running_loop()
        for i in range(5):
            start = loop.time()
            assert await storage.get(f"k{i}") == f"v{i}".encode()
            assert loop.time() - start < 1.5 * rtt
        assert commandstats(control).get("mget") == 5
    finally:
        await storage.close()


async def test_a_fast_server_still_gets_one_batch_per_loop_turn(
    proxy: TcpProxy, control: redis.Redis
) -> None:
    # Fewer batches than allowed in flight: each loop turn's requests are one MGET, sent at once.
    storage, _ = await slow_storage(proxy, control)
    proxy.pass_through()
    try:
        control.config_resetstat()
        turns = batches_in_flight(POOL_SIZE)[0] // 2
        gets = []
        for turn in range(turns):
            gets += [asyncio.ensure_future(storage.get(f"k{turn}")) for _ in range(4)]
            await asyncio.sleep(0)
        assert await asyncio.gather(*gets) == [f"v{turn}".encode() for turn in range(turns) for _ in range(4)]
        assert commandstats(control).get("mget") == turns
    finally:
        await storage.close()


async def test_merged_reads_mix_gets_and_get_manys_with_repeated_keys(
    proxy: TcpProxy, control: redis.Redis
) -> None:
    # pool_size=2: one read batch in flight; everything asked meanwhile, turn after turn, is one batch,
    # more keys than one MGET takes, repeated within and across requests.
    assert batches_in_flight(2)[0] == 1
    storage, _ = await slow_storage(proxy, control, pool_size=2)
    try:
        big = [f"k{i % KEYS}" for i in range(MGET_CHUNK)] + [f"absent{i}" for i in range(MGET_CHUNK)]
        first = asyncio.ensure_future(storage.get("k1"))
        await asyncio.sleep(0)  # the first batch is sent and waits for Redis
        requests: list[asyncio.Future[object]] = []
        for request in (
            storage.get_many(["k2", "k3", "k2", "absent"]),
            storage.get("k2"),
            storage.get("absent"),
            storage.get_many(big),
            storage.get("k1"),
            storage.get_many(["k999", "absent0"]),
        ):
            requests.append(asyncio.ensure_future(request))
            await asyncio.sleep(0)  # each request in a turn of its own
        assert await first == b"v1"
        answers = await asyncio.gather(*requests)
        assert answers == [
            {"k2": b"v2", "k3": b"v3"},
            b"v2",
            None,
            {f"k{i}": f"v{i}".encode() for i in range(KEYS)},
            b"v1",
            {"k999": b"v999"},
        ]
        # The first batch, then the merged one: its distinct keys in as few MGETs as MGET_CHUNK allows.
        distinct = {"k1", "k2", "k3", "absent", "k999", "absent0", *big}
        assert len(distinct) > MGET_CHUNK
        assert commandstats(control).get("mget") == 1 + math.ceil(len(distinct) / MGET_CHUNK)
    finally:
        await storage.close()
