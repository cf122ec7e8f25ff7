"""The SQL storages under the engine: real concurrency, killed connections, dead servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme.serializer import PickleSerializer
from tests.fixtures.sql_servers import raw_mysql, raw_postgres
from tests.sql.support import Database
from tests.waiting import flights_done

_names = itertools.count()


def counting_node(storage_name: str) -> Any:
    """A node class cached only in ``storage_name`` whose loader counts its calls per id."""

    class SqlItem(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"item:{self.id}"

        async def load(self) -> dict[str, int]:
            SqlItem.loads[self.id] += 1  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)  # long enough for concurrent callers to pile up
            return {"id": self.id}

        class Meta(cacheme.Node.Meta):
            version = f"v{next(_names)}"
            caches = [cacheme.Cache(storage=storage_name, ttl=timedelta(minutes=5))]
            serializer = PickleSerializer()

    SqlItem.loads = Counter()  # type: ignore[attr-defined]
    return SqlItem


@contextlib.asynccontextmanager
async def registered(db: Database, **options: Any) -> AsyncIterator[str]:
    name = f"sql-{db.kind}-{next(_names)}"
    await cacheme.register_storage(name, db.storage(**options))
    try:
        yield name
    finally:
        await cacheme.unregister_storage(name)


async def test_thousand_concurrent_gets_load_each_key_once(db: Database) -> None:
    async with registered(db, pool_size=5) as name:
        node = counting_node(name)
        ids = [i % 250 for i in range(1000)]
        results = await asyncio.gather(*(cacheme.get(node(id=i)) for i in ids))
        assert results == [{"id": i} for i in ids]
        assert node.loads == Counter(range(250))  # exactly one load per distinct key
        assert await flights_done()
        assert await db.count_rows() == 250
        metrics = cacheme.stats(node)
        assert metrics.storage_error_count() == 0
        hits_before = metrics.hit_count()
        again = await asyncio.gather(*(cacheme.get(node(id=i)) for i in ids))
        assert again == results
        assert metrics.hit_count() - hits_before == 1000
        assert node.loads == Counter(range(250))
        many = await cacheme.get_all([node(id=i) for i in [*range(240, 260), 3, 3]])
        assert many == [{"id": i} for i in [*range(240, 260), 3, 3]]
        assert node.loads == Counter(range(260))


async def _postgres_blocked(table: str, admin: Any) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND wait_event_type = 'Lock' "
        "AND query LIKE $1",
        f"%{table}%",
    )
    return [row[0] for row in rows]


async def _mysql_blocked(table: str, admin: Any) -> list[int]:
    async with admin.cursor() as cursor:
        await cursor.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
            "AND STATE LIKE 'Waiting for table%%' AND INFO LIKE %s",
            (f"%{table}%",),
        )
        return [row[0] for row in await cursor.fetchall()]


class TableLock:
    """``db``'s table locked from a connection of its own, until ``release`` or the end of the block."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.admin: Any = None
        self._transaction: Any = None
        self._released = False

    async def __aenter__(self) -> TableLock:
        if self.db.kind == "postgresql":
            self.admin = await raw_postgres()
            self._transaction = self.admin.transaction()
            await self._transaction.start()
            await self.admin.execute(f"LOCK TABLE {self.db.table} IN ACCESS EXCLUSIVE MODE")
        else:
            self.admin = await raw_mysql()
            async with self.admin.cursor() as cursor:
                await cursor.execute(f"LOCK TABLES {self.db.table} WRITE")
        return self

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.db.kind == "postgresql":
            await self._transaction.rollback()
        else:
            async with self.admin.cursor() as cursor:
                await cursor.execute("UNLOCK TABLES")

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.release()
        finally:
            if self.db.kind == "postgresql":
                await self.admin.close()
            else:
                self.admin.close()


async def _wait_for(find: Any, count: int) -> list[int]:
    for _ in range(200):
        found: list[int] = await find()
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {len(found)} of {count} pool connections ever blocked")


async def test_killed_connections_are_survived_and_the_pool_recovers(server_db: Database) -> None:
    db = server_db
    pool_size = 4
    async with registered(db, pool_size=pool_size) as name:
        node = counting_node(name)
        metrics = cacheme.stats(node)
        # Hold the table locked from another connection so the pool's queries are in flight, then
        # kill exactly those connections from that other connection.
        async with TableLock(db) as lock:
            requests = []
            for i in range(40):
                requests.append(asyncio.ensure_future(cacheme.get(node(id=i))))
                # One loop turn each: the engine reads the keys missed in one turn together, so
                # separate turns make separate reads, and every pool connection blocks on the lock.
                await asyncio.sleep(0)
            if db.kind == "postgresql":
                # Another connection again: pg_stat_activity is a snapshot inside the locking transaction.
                monitor = await raw_postgres()
                try:
                    victims = await _wait_for(lambda: _postgres_blocked(db.table, monitor), pool_size)
                    for pid in victims:
                        assert await monitor.fetchval("SELECT pg_terminate_backend($1)", pid)
                finally:
                    await monitor.close()
            else:
                victims = await _wait_for(lambda: _mysql_blocked(db.table, lock.admin), pool_size)
                async with lock.admin.cursor() as cursor:
                    for thread_id in victims:
                        await cursor.execute(f"KILL {int(thread_id)}")
            await lock.release()
            results = await asyncio.wait_for(asyncio.gather(*requests), 30)
        assert results == [{"id": i} for i in range(40)]  # every request answered (from the loader)
        assert node.loads == Counter(range(40))
        assert metrics.storage_error_count() >= len(victims)
        assert await flights_done()
        # Recovered: the pool works again. Keys whose write-back was on a killed connection were
        # not cached; this round loads and writes them, with no new storage error.
        errors = metrics.storage_error_count()
        assert await asyncio.gather(*(cacheme.get(node(id=i)) for i in range(40))) == results
        assert metrics.storage_error_count() == errors
        assert await flights_done()
        # Every value is now read back from the database through fresh connections.
        hits = metrics.hit_count()
        assert await asyncio.gather(*(cacheme.get(node(id=i)) for i in range(40))) == results
        assert metrics.hit_count() - hits == 40
        assert metrics.storage_error_count() == errors
        assert await db.count_rows() == 40


async def test_a_locked_table_times_out_instead_of_hanging(server_db: Database) -> None:
    db = server_db
    storage = db.storage(command_timeout=0.5, pool_size=2)
    await storage.connect()
    try:
        await storage.set("k", b"v", None)
        async with TableLock(db):
            for _ in range(3):
                with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                    await asyncio.wait_for(storage.get("k"), 20)
        assert await storage.get("k") == b"v"  # the pool recovered its timed-out connections
    finally:
        await storage.close()


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_a_server_that_never_answers_fails_connect_in_bounded_time(scheme: str) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    storage = cacheme.Storage(f"{scheme}://u@127.0.0.1:{port}/db", connect_timeout=0.5)
    try:
        with pytest.raises(Exception) as raised:
            await asyncio.wait_for(storage.connect(), 20)
        assert not isinstance(raised.value, AssertionError)
        assert accepted  # it did reach the silent server
    finally:
        await storage.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
