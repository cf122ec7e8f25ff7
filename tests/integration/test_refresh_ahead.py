"""Entries that know their age, over a real chain [local, Redis]: the header in Redis, back-fills
that keep the remaining lifetime, refresh_after, early_refresh and stale_if_error (issue 13)."""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import pytest
import pytest_asyncio
import redis.asyncio

import cacheme
from cacheme import singleflight
from cacheme.entry import Entry, pack
from cacheme.storage import MISSING
from tests.waiting import flights_done

SOURCE_SECONDS = 0.05
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Chain:
    local: cacheme.LocalStorage
    local_name: str
    redis_name: str
    redis: redis.asyncio.Redis
    prefix: str


@pytest_asyncio.fixture
async def chain() -> AsyncIterator[Chain]:
    suffix = uuid.uuid4().hex[:8]
    local = cacheme.Storage("local://lru", size=10_000)
    assert isinstance(local, cacheme.LocalStorage)
    names = (f"local-{suffix}", f"redis-{suffix}")
    await cacheme.register_storage(names[0], local)
    await cacheme.register_storage(names[1], cacheme.Storage("redis://127.0.0.1:6379/0"))
    prefix = f"refresh-{suffix}"
    cacheme.set_prefix(prefix)
    client: redis.asyncio.Redis = redis.asyncio.Redis(host="127.0.0.1", port=6379)
    try:
        yield Chain(local, names[0], names[1], client, prefix)
    finally:
        cacheme.set_prefix("cacheme")
        for name in names:
            await cacheme.unregister_storage(name)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def node_class(
    tiers: list[tuple[str, float]],
    *,
    refresh_after: float | None = None,
    early_refresh: float | None = None,
    stale_if_error: float | None = None,
    source_seconds: float = SOURCE_SECONDS,
) -> Any:
    """A node on ``tiers`` ((storage, ttl seconds)) whose source counts its loads, takes
    SOURCE_SECONDS, returns ``"<id>-<load number>"`` and raises while ``failing`` is set."""

    class Timed(cacheme.Node):
        id: int
        loads: ClassVar[int] = 0
        failing: ClassVar[bool] = False

        def key(self) -> str:
            return f"timed:{self.id}"

        async def load(self) -> str:
            await asyncio.sleep(source_seconds)
            Timed.loads += 1
            if Timed.failing:
                raise ConnectionError("the source is down")
            return f"{self.id}-{Timed.loads}"

        class Meta(cacheme.Node.Meta):
            version = "v1"

    Timed.Meta.caches = [cacheme.Cache(name, timedelta(seconds=ttl)) for name, ttl in tiers]
    Timed.Meta.refresh_after = None if refresh_after is None else timedelta(seconds=refresh_after)
    Timed.Meta.early_refresh = early_refresh
    Timed.Meta.stale_if_error = None if stale_if_error is None else timedelta(seconds=stale_if_error)
    return Timed


# ---------------------------------------------------------------- the header and back-fill


async def test_redis_holds_the_pinned_header_before_the_serialized_value(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 60), (chain.redis_name, 60)])
    node = timed(id=1)
    before = time.time()
    assert await cacheme.get(node) == "1-1"
    after = time.time()
    assert await flights_done()
    raw = await chain.redis.get(node.full_key())
    assert isinstance(raw, bytes)
    assert raw[:4] == b"\xc1cm\x01"
    loaded_at, load_time, expires_at = struct.unpack_from("<ddd", raw, 4)
    assert before <= loaded_at <= after
    assert SOURCE_SECONDS <= load_time < after - before
    assert expires_at == pytest.approx(loaded_at + 60, abs=1e-6)
    assert msgpack.unpackb(raw[28:]) == "1-1"
    # Redis's own ttl is the entry's remaining life.
    assert 59_000 < await chain.redis.pttl(node.full_key()) <= 60_000
    # The local tier keeps the same numbers beside the object.
    held = chain.local.get_sync(node.full_key())
    assert isinstance(held, Entry)
    assert (held.value, held.loaded_at, held.load_time, held.expires_at) == (
        "1-1",
        loaded_at,
        load_time,
        expires_at,
    )


async def test_bytes_without_a_header_are_read_as_an_entry_of_unknown_age(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 60), (chain.redis_name, 60)])
    node = timed(id=2)
    # What cacheme 1.0 wrote: the serialized value alone.
    await chain.redis.set(node.full_key(), msgpack.packb("written by 1.0"), px=60_000)
    assert await cacheme.get(node) == "written by 1.0"
    assert timed.loads == 0
    held = chain.local.get_sync(node.full_key())
    assert held.value == "written by 1.0" and held.loaded_at is None
    assert held.expires_at == pytest.approx(time.time() + 60, abs=1)  # the local tier's full ttl


async def test_a_header_of_another_version_is_a_counted_miss(chain: Chain) -> None:
    timed = node_class([(chain.redis_name, 60)])
    node = timed(id=3)
    await chain.redis.set(node.full_key(), b"\xc1cm\x02" + bytes(40), px=60_000)
    assert await cacheme.get(node) == "3-1"
    stats = cacheme.stats(timed)
    assert (stats.storage_error_count(), stats.hit_count(), timed.loads) == (1, 0, 1)
    assert await flights_done()
    raw = await chain.redis.get(node.full_key())
    assert isinstance(raw, bytes) and raw[:4] == b"\xc1cm\x01"  # overwritten


async def put_in_redis(chain: Chain, key: str, value: str, loaded_ago: float, expires_in: float) -> None:
    now = time.time()
    entry = Entry(value, now - loaded_ago, SOURCE_SECONDS, now + expires_in)
    raw = pack(entry, entry.expires_at, msgpack.packb(value))
    await chain.redis.set(key, raw, px=int(expires_in * 1000))


async def test_a_back_fill_expires_with_the_entry_it_came_from(chain: Chain) -> None:
    # 1 s everywhere; the value in Redis was loaded 0.7 s ago: the local copy must go 0.3 s from now,
    # not 1 s from now (cacheme 1.0 served it until 1.7 s after its load).
    timed = node_class([(chain.local_name, 1), (chain.redis_name, 1)])
    node = timed(id=4)
    await put_in_redis(chain, node.full_key(), "old", loaded_ago=0.7, expires_in=0.3)
    assert await cacheme.get(node) == "old"
    held = chain.local.get_sync(node.full_key())
    assert held.expires_at == pytest.approx(time.time() + 0.3, abs=0.05)
    await asyncio.sleep(0.4)
    assert chain.local.get_sync(node.full_key()) is MISSING
    assert await cacheme.get(node) == "4-1"
    assert timed.loads == 1


async def test_a_back_fill_expires_with_the_earlier_tiers_ttl_counted_from_the_load(chain: Chain) -> None:
    # The local tier's ttl (1 s) counted from the load 0.8 s ago, though Redis keeps it 9 s more.
    timed = node_class([(chain.local_name, 1), (chain.redis_name, 10)])
    node = timed(id=5)
    await put_in_redis(chain, node.full_key(), "old", loaded_ago=0.8, expires_in=9.2)
    assert await cacheme.get(node) == "old"
    held = chain.local.get_sync(node.full_key())
    assert held.expires_at == pytest.approx(time.time() + 0.2, abs=0.05)
    assert held.loaded_at == pytest.approx(time.time() - 0.8, abs=0.05)
    await asyncio.sleep(0.3)
    assert chain.local.get_sync(node.full_key()) is MISSING
    # get_all back-fills by the same rule.
    others = [timed(id=50 + i) for i in range(3)]
    for other in others:
        await put_in_redis(chain, other.full_key(), f"old-{other.id}", loaded_ago=0.9, expires_in=9.1)
    assert await cacheme.get_all(others) == ["old-50", "old-51", "old-52"]
    for other in others:
        assert chain.local.get_sync(other.full_key()).expires_at == pytest.approx(time.time() + 0.1, abs=0.05)


async def test_a_remote_copy_past_its_expiry_is_a_miss(chain: Chain) -> None:
    # Redis still holds it (its own ttl counted from when the write reached it), the entry says expired.
    timed = node_class([(chain.local_name, 1), (chain.redis_name, 1)])
    node = timed(id=60)
    now = time.time()
    entry = Entry("expired", now - 1.01, SOURCE_SECONDS, now - 0.01)
    await chain.redis.set(node.full_key(), pack(entry, entry.expires_at, msgpack.packb("expired")), px=5000)
    assert await cacheme.get(node) == "60-1"
    assert timed.loads == 1


async def test_no_value_is_served_older_than_the_ttl_of_its_tier(chain: Chain) -> None:
    # 1 s ttls, the local copy dropped now and then: every value served is at most 1 s old.
    timed = node_class([(chain.local_name, 1), (chain.redis_name, 1)])
    node = timed(id=6)
    loaded_at: dict[str, float] = {}
    oldest = 0.0
    deadline = time.time() + 2.5
    while time.time() < deadline:
        value = await cacheme.get(node)
        loaded_at.setdefault(value, time.time())
        oldest = max(oldest, time.time() - loaded_at[value])
        if random.random() < 0.2:
            await chain.local.delete(node.full_key())
        await asyncio.sleep(0.02)
    assert timed.loads >= 2
    assert oldest <= 1.0 + SOURCE_SECONDS


def run_child(prefix: str, node_id: int) -> tuple[str, float]:
    """Run tests/integration/refresh_child.py: another process, its own loop; its value and the
    ``loaded_at`` of its local entry."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.refresh_child", prefix, str(node_id)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # a reload cut off by the exit prints nothing
    value, loaded_at = done.stdout.strip().rsplit(" ", 1)
    return value, float(loaded_at)


async def test_another_process_reads_the_age_the_first_one_wrote(chain: Chain) -> None:
    # Process A loads; process B (and this one) read its entry from Redis with A's load time.
    value, loaded_at = await asyncio.to_thread(run_child, chain.prefix, 1)
    assert value.startswith("loaded by process ")
    again, read_at = await asyncio.to_thread(run_child, chain.prefix, 1)
    assert (again, read_at) == (value, loaded_at)
    # Past refresh_after, process C is answered at once and starts a reload, cut off by its exit.
    await asyncio.sleep(0.25)
    stale, stale_at = await asyncio.to_thread(run_child, chain.prefix, 1)
    assert (stale, stale_at) == (value, loaded_at)
    raw = await chain.redis.get(f"{chain.prefix}:shared:1:v1")
    assert isinstance(raw, bytes) and struct.unpack_from("<d", raw, 4)[0] == loaded_at


# ---------------------------------------------------------------- refresh_after


async def test_refresh_after_serves_at_once_and_reloads_once_in_the_background(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 2), (chain.redis_name, 2)], refresh_after=0.3)
    node = timed(id=7)
    assert await cacheme.get(node) == "7-1"
    assert await flights_done()
    await asyncio.sleep(0.35)
    values = await asyncio.gather(*(cacheme.get(node) for _ in range(2000)))
    assert set(values) == {"7-1"}  # all answered by the entry: nobody waited for the reload
    stats = cacheme.stats(timed)
    assert stats.refresh_count() == 1
    assert await flights_done()
    assert timed.loads == 2
    assert await cacheme.get(node) == "7-2"
    # Every tier was rewritten, with a new age.
    held = chain.local.get_sync(node.full_key())
    assert held.value == "7-2" and time.time() - held.loaded_at < 0.2
    raw = await chain.redis.get(node.full_key())
    assert isinstance(raw, bytes) and msgpack.unpackb(raw[28:]) == "7-2"
    assert stats.hit_count() == 2001 and stats.miss_count() == 1


async def test_refresh_after_renews_a_value_found_in_redis_too(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 5), (chain.redis_name, 5)], refresh_after=0.5)
    nodes = [timed(id=80 + i) for i in range(3)]
    for node in nodes:
        await put_in_redis(chain, node.full_key(), f"old-{node.id}", loaded_ago=1, expires_in=4)
    assert await cacheme.get(nodes[0]) == "old-80"
    assert await cacheme.get_all(nodes[1:]) == ["old-81", "old-82"]
    assert await flights_done()
    assert cacheme.stats(timed).refresh_count() == 3
    renewed = await cacheme.get_all(nodes)
    assert [value.split("-")[0] for value in renewed] == ["80", "81", "82"]
    assert sorted(value.split("-")[1] for value in renewed) == ["1", "2", "3"]  # each reloaded once
    assert timed.loads == 3


async def test_a_failed_background_reload_is_logged_counted_and_never_raised(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    timed = node_class([(chain.local_name, 5), (chain.redis_name, 5)], refresh_after=0.1)
    node = timed(id=9)
    assert await cacheme.get(node) == "9-1"
    assert await flights_done()
    await asyncio.sleep(0.15)
    timed.failing = True
    with caplog.at_level(logging.WARNING, logger="cacheme"):
        assert await cacheme.get(node) == "9-1"
        assert await flights_done()
    stats = cacheme.stats(timed)
    assert (stats.refresh_count(), stats.refresh_failure_count()) == (1, 1)
    assert "background reload" in caplog.text and "the source is down" in caplog.text
    # The entry stays, and the next hit tries again.
    assert await cacheme.get(node) == "9-1"
    assert await flights_done()
    assert stats.refresh_failure_count() == 2
    timed.failing = False
    assert await cacheme.get(node) == "9-1"
    assert await flights_done()
    assert await cacheme.get(node) == "9-4"


async def test_invalidate_during_a_background_reload_wins(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 5), (chain.redis_name, 5)], refresh_after=0.1)
    node = timed(id=10)
    assert await cacheme.get(node) == "10-1"
    assert await flights_done()
    await asyncio.sleep(0.15)
    assert await cacheme.get(node) == "10-1"  # the reload starts
    await cacheme.invalidate(node)
    assert await flights_done()
    assert chain.local.get_sync(node.full_key()) is MISSING
    assert await chain.redis.get(node.full_key()) is None


async def test_memoize_takes_the_node_options(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 5)], refresh_after=0.1)
    calls = []

    @cacheme.Memoize(timed)
    async def fetch(item: int) -> str:
        calls.append(item)
        return f"memo-{item}-{len(calls)}"

    @fetch.to_node
    def _(item: int) -> Any:
        return timed(id=item)

    assert await fetch(1) == "memo-1-1"
    await asyncio.sleep(0.15)
    assert await fetch(1) == "memo-1-1"
    assert await flights_done()
    assert await fetch(1) == "memo-1-2"
    assert cacheme.stats(timed).refresh_count() == 1


# ---------------------------------------------------------------- early_refresh (XFetch)


async def test_early_refresh_rate_over_many_hits_matches_xfetch(chain: Chain) -> None:
    # An entry loaded in 100 s (its recorded load time) with 100 s left: with beta 1 a hit renews
    # with probability exp(-100 / (100 * 1)) = 0.368. The source fails at once, so the entry stays.
    timed = node_class([(chain.local_name, 3600)], early_refresh=1.0, source_seconds=0)
    timed.failing = True
    node = timed(id=11)
    now = time.time()
    held = Entry("held", now - 3500, 100.0, now + 100)
    chain.local.set_sync(node.full_key(), held, timedelta(seconds=100))
    hits = 1500
    for _ in range(hits):
        assert await cacheme.get(node) == "held"
        assert await flights_done()  # the failed reload ends before the next hit
    rate = cacheme.stats(timed).refresh_count() / hits
    assert rate == pytest.approx(0.3679, abs=0.045)  # 3.6 standard deviations


# ---------------------------------------------------------------- stale_if_error


async def test_stale_if_error_serves_an_expired_entry_while_the_source_fails(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 0.3), (chain.redis_name, 0.3)], stale_if_error=0.6)
    node = timed(id=12)
    assert await cacheme.get(node) == "12-1"
    assert await flights_done()
    assert await chain.redis.pttl(node.full_key()) > 600  # kept past its expiry
    await asyncio.sleep(0.35)
    timed.failing = True
    assert await cacheme.get(node) == "12-1"
    assert await cacheme.get_all([node, node]) == ["12-1", "12-1"]
    stats = cacheme.stats(timed)
    assert stats.stale_count() == 2 and timed.loads == 3
    # Past the window the error is the caller's.
    await asyncio.sleep(0.6)
    with pytest.raises(ConnectionError):
        await cacheme.get(node)
    # Expired is expired for everything else: once the source is back, the next get loads.
    timed.failing = False
    assert await cacheme.get(node) == "12-5"


async def test_stale_if_error_from_redis_alone(chain: Chain) -> None:
    timed = node_class([(chain.redis_name, 0.2)], stale_if_error=5)
    node = timed(id=13)
    assert await cacheme.get(node) == "13-1"
    assert await flights_done()
    await asyncio.sleep(0.25)
    timed.failing = True
    values = await asyncio.gather(*(cacheme.get(node) for _ in range(500)))
    assert set(values) == {"13-1"}
    assert timed.loads == 2  # one load for the 500
    assert cacheme.stats(timed).stale_count() == 1


async def test_without_stale_if_error_a_failed_load_is_the_callers_error(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 0.2), (chain.redis_name, 0.2)], refresh_after=0.1)
    node = timed(id=14)
    assert await cacheme.get(node) == "14-1"
    assert await flights_done()
    await asyncio.sleep(0.25)
    timed.failing = True
    with pytest.raises(ConnectionError):
        await cacheme.get(node)
    assert cacheme.stats(timed).stale_count() == 0


# ---------------------------------------------------------------- concurrency and cancellation


async def test_thousands_of_requests_cancelled_at_random_points_leave_nothing_stuck(chain: Chain) -> None:
    timed = node_class(
        [(chain.local_name, 0.4), (chain.redis_name, 0.4)], refresh_after=0.2, stale_if_error=1
    )
    nodes = [timed(id=100 + i) for i in range(20)]
    deadline = time.time() + 2
    served = 0
    while time.time() < deadline:
        tasks = [asyncio.ensure_future(cacheme.get(random.choice(nodes))) for _ in range(300)]
        await asyncio.sleep(random.random() * 0.02)
        for task in random.sample(tasks, 100):
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, asyncio.CancelledError):
                continue
            assert isinstance(outcome, str), outcome
            served += 1
    assert await flights_done()
    assert served > 1000
    assert singleflight.in_flight_count() == 0
    stats = cacheme.stats(timed)
    assert stats.refresh_count() > 0 and stats.load_failure_count() == 0


async def test_one_background_reload_per_key_across_the_event_loops_of_the_process(chain: Chain) -> None:
    # Four threads, each its own loop, hit the same due entry at once: one reload, not four.
    timed = node_class([(chain.local_name, 5), (chain.redis_name, 5)], refresh_after=0.1, source_seconds=0.3)
    node = timed(id=90)
    assert await cacheme.get(node) == "90-1"
    await flights_done()
    await asyncio.sleep(0.15)
    start = threading.Barrier(4)

    def hit_in_a_loop_of_its_own() -> list[str]:
        async def hits() -> list[str]:
            start.wait()
            values = [await cacheme.get(node) for _ in range(50)]
            await asyncio.sleep(0.5)  # the reload (0.3 s) ends within this loop's life, or not
            return values

        return asyncio.run(hits())

    results = await asyncio.gather(*(asyncio.to_thread(hit_in_a_loop_of_its_own) for _ in range(4)))
    assert {value for values in results for value in values} == {"90-1"}
    assert cacheme.stats(timed).refresh_count() == 1
    assert timed.loads == 2


async def test_a_reload_cut_off_by_its_loops_end_does_not_block_the_next(chain: Chain) -> None:
    timed = node_class([(chain.local_name, 5), (chain.redis_name, 5)], refresh_after=0.1)
    node = timed(id=91)
    assert await cacheme.get(node) == "91-1"
    await flights_done()
    await asyncio.sleep(0.15)

    async def hit_and_end() -> str:
        value: str = await cacheme.get(node)  # starts the reload; asyncio.run then cancels it
        return value

    assert await asyncio.to_thread(asyncio.run, hit_and_end()) == "91-1"
    assert cacheme.stats(timed).refresh_count() == 1
    assert await cacheme.get(node) == "91-1"  # a reload again, in this loop
    await flights_done()
    assert cacheme.stats(timed).refresh_count() == 2
    assert await cacheme.get(node) == "91-2"
