"""Batch writes never lose a write to a deadlock.

Two processes writing the same fresh keys in opposite orders do not deadlock (rows are
written in key_hash order), and a batch write that a deadlock kills anyway is retried once.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from cacheme_sql.base import key_hash
from tests.fixtures.sql_servers import raw_mysql, raw_postgres
from tests.sql.concurrent_writer import node_class
from tests.sql.support import Database, database

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 10
KEYS = 400


async def run_writer(db: Database, barrier_dir: Path, order: str, name: str, other: str) -> tuple[int, str]:
    """Run one writer process to its end: its storage error count and what it logged."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.sql.concurrent_writer",
        db.url,
        db.table,
        db.table,  # the key version: fresh keys for every test
        order,
        str(ROUNDS),
        str(KEYS),
        str(barrier_dir),
        name,
        other,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, stderr.decode()
    return int(stdout.split()[-1]), stderr.decode()


async def test_two_processes_get_all_the_same_keys_in_opposite_orders_without_write_errors(
    db: Database, tmp_path: Path
) -> None:
    storage = db.storage(sweep_interval=None)
    await storage.connect()  # the table exists before the writers start
    try:
        barrier_dir = tmp_path / "barrier"
        barrier_dir.mkdir()
        ascending, descending = await asyncio.gather(
            run_writer(db, barrier_dir, "asc", "a", "b"),
            run_writer(db, barrier_dir, "desc", "b", "a"),
        )
        errors = [ascending[0], descending[0]]
        assert errors == [0, 0], f"storage errors per writer: {errors}; logged: {ascending[1]}{descending[1]}"
        assert await db.count_rows() == ROUNDS * KEYS
        row = node_class(db.table)
        keys = [row(round=r, id=i).full_key() for r in range(ROUNDS) for i in range(KEYS)]
        assert len(await storage.get_many(keys)) == ROUNDS * KEYS
    finally:
        await storage.close()


# -- a deadlock that still happens (another program locking in its own order) is retried once --


def keys_in_lock_order() -> tuple[str, str]:
    """Two keys, the first being the one a batch write locks first (the lower key_hash)."""
    first, second = sorted(["deadlock:left", "deadlock:right"], key=key_hash)
    return first, second


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Return once ``condition()`` is true; fail after 5 seconds."""
    for _ in range(500):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


async def test_postgresql_batch_write_killed_by_a_deadlock_is_retried(tmp_path: Path) -> None:
    db = database("postgresql", tmp_path)
    storage = db.storage(sweep_interval=None)
    await storage.connect()
    first, second = keys_in_lock_order()
    insert = f"INSERT INTO {db.table} VALUES ($1, $2, $3, NULL, now())"

    async def batch_write_waits() -> bool:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1"
        return bool((await db.fetch(query, [f"INSERT INTO {db.table} %"]))[0][0] == 1)

    other = await raw_postgres()
    try:
        async with other.transaction():
            # The batch write's deadlock check (after 1 s) runs first: it is the one the server kills.
            await other.execute("SET LOCAL deadlock_timeout = '20s'")
            await other.execute(insert, key_hash(second), second, b"other")
            write = asyncio.ensure_future(storage.set_many({first: b"ours", second: b"ours"}, None))
            await wait_until(batch_write_waits, "the batch write waits for the second row")
            await other.execute(insert, key_hash(first), first, b"other")  # the cycle
        await asyncio.wait_for(write, 10)
        assert await storage.get_many([first, second]) == {first: b"ours", second: b"ours"}
    finally:
        await other.close()
        await storage.close()
        await db.drop()


async def test_mysql_batch_write_killed_by_a_deadlock_is_retried(tmp_path: Path) -> None:
    db = database("mysql", tmp_path)
    storage = db.storage(sweep_interval=None)
    await storage.connect()
    first, second = keys_in_lock_order()
    insert = f"INSERT INTO {db.table} VALUES (%s, %s, %s, NULL, UTC_TIMESTAMP(6))"

    async def batch_write_waits() -> bool:
        query = (
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT' "
            "AND trx_query LIKE %s"
        )
        return bool((await db.fetch(query, [f"INSERT INTO {db.table} %"]))[0][0] == 1)

    other = await raw_mysql()
    try:
        async with other.cursor() as cursor:
            await cursor.execute("START TRANSACTION")
            # InnoDB kills the transaction that changed fewer rows: make that the batch write.
            fillers = [f"filler:{i}" for i in range(50)]
            await cursor.executemany(insert, [(key_hash(key), key, b"x") for key in fillers])
            await cursor.execute(insert, (key_hash(second), second, b"other"))
            write = asyncio.ensure_future(storage.set_many({first: b"ours", second: b"ours"}, None))
            await wait_until(batch_write_waits, "the batch write waits for the second row")
            await cursor.execute(insert, (key_hash(first), first, b"other"))  # the cycle
            await cursor.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        assert await storage.get_many([first, second]) == {first: b"ours", second: b"ours"}
        assert await db.count_rows() == 52
    finally:
        other.close()
        await storage.close()
        await db.drop()
