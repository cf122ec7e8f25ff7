"""Leases (``Meta.lease``) in PostgreSQL: ``PostgreSQLLeases`` driven directly.

Other processes are played by a raw asyncpg connection. Every test has a table of its own,
dropped afterwards. Leases through the engine, on every backend: tests/integration/test_leases.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

import cacheme
from cacheme.bus import decode
from cacheme.entry import LEASE_MARK
from cacheme.plugins import lease_class_for
from cacheme_sql.postgresql import PostgreSQLStorage
from cacheme_sql.postgresql_bus import PostgreSQLBus, channel_for
from cacheme_sql.postgresql_lease import PostgreSQLLeases, lease_channel_for
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.sql_servers import POSTGRES_URL, drop_table, raw_postgres
from tests.sql.support import LeaseTable as Table
from tests.sql.support import fresh_table

ROOT = Path(__file__).resolve().parents[2]
LEASE = timedelta(seconds=10)


def fenced(
    values: dict[str, bytes], marks: Mapping[str, bytes], ttl_ms: int | None
) -> tuple[dict[str, bytes], Mapping[str, bytes], dict[str, int | None]]:
    """``write``'s arguments: ``values`` under ``marks``, each with the expiry ``ttl_ms``."""
    return values, marks, dict.fromkeys(values, ttl_ms)


def mark(token: bytes | str) -> bytes:
    """A mark whose token is ``token`` repeated to 16 bytes."""
    raw = token.encode() if isinstance(token, str) else token
    return LEASE_MARK + (raw * 16)[:16]


@pytest_asyncio.fixture
async def table() -> AsyncIterator[Table]:
    name = fresh_table("lease")
    connection = await raw_postgres()
    try:
        yield Table(name, connection)
    finally:
        await connection.close()
        await drop_table(POSTGRES_URL, name)


@pytest_asyncio.fixture
async def leases(table: Table) -> AsyncIterator[PostgreSQLLeases]:
    storage = PostgreSQLStorage(POSTGRES_URL, table=table.table, pool_size=60, sweep_interval=None)
    await storage.connect()
    try:
        yield PostgreSQLLeases(storage)
    finally:
        await storage.close()


def behind_a_proxy(
    tcp_proxy: Callable[[str, int], TcpProxy], options: dict[str, Any]
) -> tuple[cacheme.BaseStorage, TcpProxy]:
    """A PostgreSQL storage whose connections (its listeners' too) go through a proxy of the test's."""
    parts = urlsplit(POSTGRES_URL)
    proxy = tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return cacheme.Storage(parts._replace(netloc=netloc).geturl(), **options), proxy


# ---------------------------------------------------------------- the plugin and the channel


def test_the_plugin_names_the_leases_for_both_schemes_without_importing_the_driver() -> None:
    code = (
        "import sys, cacheme.plugins as p; "
        "print(sorted(k for k, v in p.lease_schemes().items() if v.startswith('cacheme_sql')), "
        "'asyncpg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['postgres',", "'postgresql']", "False"]


def test_the_leases_class_of_a_postgresql_storage() -> None:
    assert lease_class_for(cacheme.Storage(POSTGRES_URL, table="t")) is PostgreSQLLeases
    assert lease_class_for(cacheme.Storage(POSTGRES_URL.replace("postgresql://", "postgres://"))) is (
        PostgreSQLLeases
    )
    assert lease_class_for(cacheme.Storage("sqlite:///:memory:")) is None
    with pytest.raises(TypeError, match="needs a PostgreSQLStorage"):
        PostgreSQLLeases(cacheme.Storage("local://lru", size=10))


def test_the_notices_have_a_channel_of_their_own_named_after_the_table() -> None:
    storage = cacheme.Storage(POSTGRES_URL, table="my_cache")
    assert PostgreSQLLeases(storage).channel == lease_channel_for("my_cache") == "cacheme_lease_my_cache"
    assert PostgreSQLLeases(storage).channel != PostgreSQLBus(storage).channel == channel_for("my_cache")
    assert len(lease_channel_for("t" * 48)) <= 63  # PostgreSQL's longest identifier
    assert PostgreSQLLeases(storage).max_payload == PostgreSQLBus(storage).max_payload


async def test_lease_notices_and_invalidations_never_reach_each_others_listeners(
    leases: PostgreSQLLeases,
) -> None:
    bus = PostgreSQLBus(leases.storage)
    heard: dict[str, list[bytes]] = {"bus": [], "leases": []}
    ready = {"bus": asyncio.Event(), "leases": asyncio.Event()}
    tasks = [
        asyncio.create_task(listener.listen(ready[name].set, heard[name].append))
        for name, listener in (("bus", bus), ("leases", leases))
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in ready.values())), 5)
        await leases.publish(b'{"v":1,"from":"x","keys":["a lease ended"]}')
        await bus.publish(b'{"v":1,"from":"x","keys":["invalidated"]}')
        deadline = time.monotonic() + 5
        while not (heard["bus"] and heard["leases"]):
            assert time.monotonic() < deadline, heard
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert [decode(payload)[1] for payload in heard["leases"]] == [["a lease ended"]]
        assert [decode(payload)[1] for payload in heard["bus"]] == [["invalidated"]]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- the protocol, on the server


async def test_acquire_grants_answers_the_time_left_or_the_value_and_write_is_fenced(
    leases: PostgreSQLLeases, table: Table
) -> None:
    keys = [f"proto:{i}" for i in range(20)]
    await table.put(keys[1], b"a value")
    first = {key: mark(bytes([i + 1])) for i, key in enumerate(keys)}
    answers = await leases.acquire(first, 5000)
    assert answers[1] == b"a value"
    assert [answers[0], *answers[2:]] == [0] * 19
    assert await table.raw(keys[0]) == first[keys[0]]
    again = await leases.acquire({keys[0]: mark("x")}, 5000)
    assert isinstance(again[0], int) and 4000 < again[0] <= 5000  # held: the time it has left
    # The write lands only where the mark still stands.
    await table.delete(keys[2])  # an invalidate
    await table.put(keys[3], b"refreshed")  # a refresh
    written = await leases.write(*fenced({key: b"loaded" for key in [*keys[2:6], keys[0]]}, first, 60_000))
    assert written == 3  # keys[0], keys[4], keys[5]
    row = await table.row(keys[0])
    assert row is not None and row[0] == b"loaded" and row[1] is not None and 59 < row[1] <= 60
    assert await table.raw(keys[2]) is None and await table.raw(keys[3]) == b"refreshed"
    assert await leases.write(*fenced({keys[6]: b"forever"}, first, None)) == 1
    assert await table.row(keys[6]) == (b"forever", None)
    # A release deletes only the key's own mark.
    await leases.release({keys[7]: first[keys[7]], keys[8]: mark("another's mark")})
    assert await table.raw(keys[7]) is None and await table.raw(keys[8]) == first[keys[8]]
    # The value written is answered to the next acquire, and so is one the storage wrote.
    await leases.storage.set(keys[9], b"set by the storage", None)
    assert await leases.acquire({keys[0]: mark("y"), keys[9]: mark("z")}, 5000) == [
        b"loaded",
        b"set by the storage",
    ]


async def test_an_expired_mark_or_value_is_taken_over(leases: PostgreSQLLeases, table: Table) -> None:
    await table.put("expired mark", mark("a holder that died"), expire_ms=-1)
    await table.put("expired value", b"stale", expire_ms=-1)
    mine = {"expired mark": mark("mine"), "expired value": mark("mine too")}
    assert await leases.acquire(mine, 3000) == [0, 0]
    for key, token in mine.items():
        row = await table.row(key)
        assert row is not None and row[0] == token and row[1] is not None and 2.9 < row[1] <= 3
    assert await leases.write(*fenced({"expired mark": b"mine"}, mine, 1000)) == 1


async def test_a_lease_that_expired_writes_nothing_even_when_nobody_took_it(
    leases: PostgreSQLLeases, table: Table
) -> None:
    mine = {"short": mark("short")}
    assert await leases.acquire(mine, 50) == [0]
    await asyncio.sleep(0.15)
    assert await leases.write(*fenced({"short": b"too late"}, mine, None)) == 0
    assert await table.raw("short") is None  # absent to readers, as the lease is over


async def test_a_mark_without_an_expiry_is_held_for_a_leases_length(
    leases: PostgreSQLLeases, table: Table
) -> None:
    await table.put("odd", mark("never expires"))
    assert await leases.acquire({"odd": mark("mine")}, 7000) == [7000]


async def test_a_write_refused_after_a_takeover(leases: PostgreSQLLeases, table: Table) -> None:
    mine = {"k": mark("mine")}
    assert await leases.acquire(mine, 50) == [0]
    await asyncio.sleep(0.1)
    assert await leases.acquire({"k": mark("theirs")}, 5000) == [0]  # another process took it over
    assert await leases.write(*fenced({"k": b"mine"}, mine, None)) == 0
    await leases.release(mine)
    assert await table.raw("k") == mark("theirs")


async def test_many_keys_in_one_call(leases: PostgreSQLLeases, table: Table) -> None:
    keys = [f"many:{i}:{'é' * (i % 3)}" for i in range(2000)]
    marks = {key: mark(str(i % 10)) for i, key in enumerate(keys)}
    await table.put(keys[10], b"present")
    await table.hold(keys[11])
    answers = await leases.acquire(marks, 10_000)
    assert answers[10] == b"present" and isinstance(answers[11], int) and answers[11] > 9000
    assert [answers[i] for i in range(len(keys)) if i not in (10, 11)] == [0] * 1998
    written = await leases.write(*fenced({key: key.encode() for key in keys}, marks, 60_000))
    assert written == 1998
    assert await leases.storage.get_many(keys[:3]) == {key: key.encode() for key in keys[:3]}
    again = await leases.acquire({key: mark("again") for key in keys}, 10_000)
    held = again[11]
    assert again[10] == b"present" and isinstance(held, int) and 8000 < held <= 10_000
    assert [again[i] for i in range(len(keys)) if i not in (10, 11)] == [
        key.encode() for i, key in enumerate(keys) if i not in (10, 11)
    ]
    await leases.release({key: mark("again") for key in keys})  # none holds that mark
    assert await table.connection.fetchval(f"SELECT count(*) FROM {table.table}") == 2000


async def test_concurrent_acquires_of_one_absent_key_from_fifty_connections_grant_it_once(
    leases: PostgreSQLLeases, table: Table
) -> None:
    pool = await leases.storage._pool()
    held = [await pool.acquire() for _ in range(50)]  # fifty connections open, then free
    for connection in held:
        await pool.release(connection)
    assert pool.get_size() == 50
    for round_number in range(10):
        key = f"contended:{round_number}"
        if round_number % 3 == 1:
            await table.put(key, mark("a holder that died"), expire_ms=-1)
        elif round_number % 3 == 2:
            await table.put(key, b"an expired value", expire_ms=-1)
        tokens = [LEASE_MARK + uuid.uuid4().bytes for _ in range(50)]
        answers = await asyncio.gather(*(leases.acquire({key: token}, 5000) for token in tokens))
        flat = [answer for (answer,) in answers]
        assert flat.count(0) == 1, flat
        assert all(isinstance(answer, int) and 0 < answer <= 5000 for answer in flat if answer != 0), flat
        assert await table.raw(key) == tokens[flat.index(0)]


async def test_an_acquire_that_meets_a_row_written_after_it_began_answers_that_row(
    leases: PostgreSQLLeases, table: Table
) -> None:
    # The other process's transaction is open: the acquire waits for its row, then answers it.
    other = table.connection
    for change, expected in (
        ("insert", "held"),
        ("update", b"written meanwhile"),
        ("delete", 0),
    ):
        transaction = other.transaction()
        await transaction.start()
        if change == "insert":
            await table.hold("raced", 5000)
        elif change == "update":
            await table.put("raced", b"written meanwhile")
        else:
            await table.delete("raced")
        acquiring = asyncio.create_task(leases.acquire({"raced": mark(change)}, 5000))
        await asyncio.sleep(0.2)
        assert not acquiring.done()  # waiting for the other's row lock
        await transaction.commit()
        (answer,) = await asyncio.wait_for(acquiring, 5)
        if expected == "held":
            assert isinstance(answer, int) and 4000 < answer <= 5000
        else:
            assert answer == expected
    assert await table.raw("raced") == mark("delete")


async def test_a_call_for_three_hundred_keys_takes_the_round_trips_of_a_call_for_one(
    table: Table, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    storage, proxy = behind_a_proxy(tcp_proxy, {"table": table.table, "pool_size": 1, "sweep_interval": None})
    await storage.connect()
    leases = PostgreSQLLeases(storage)

    async def timed(marks: dict[str, bytes]) -> list[float]:
        """How long an acquire, a write and a release of ``marks`` take, each."""
        timings = []
        for call in (
            lambda: leases.acquire(marks, 5000),
            lambda: leases.write(*fenced({key: b"v" for key in marks}, marks, 60_000)),
            lambda: leases.release(marks),
        ):
            started = time.monotonic()
            await call()
            timings.append(time.monotonic() - started)
        return timings

    try:
        await timed({"warm": mark("warm")})  # each statement prepared on the pool's one connection
        proxy.delay(0.05)  # a round trip: 0.1 s
        one = await timed({"one": mark("one")})
        many = await timed({f"many:{i}": mark(str(i)) for i in range(300)})
        # Each call: its statement, and the pool's reset of the connection when it is given back.
        assert all(0.1 <= took < 0.3 for took in one), one
        assert all(m < o + 0.08 for m, o in zip(many, one, strict=True)), (one, many)
    finally:
        proxy.pass_through()
        await storage.close()
