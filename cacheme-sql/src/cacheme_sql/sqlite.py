"""``sqlite:///relative.db`` and ``sqlite:////absolute/path.db``: a cache table in an SQLite file.

Times come from SQLite's own clock (``julianday('now')``, Unix seconds as REAL),
which for a local file is the host clock every process on the host shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import aiosqlite

from cacheme.errors import StorageConfigError
from cacheme_sql.base import SqlStorage, key_hash, row_value, rows_by_key
from cacheme_sql.ddl import ddl_statements
from cacheme_sql.schema import check_columns
from cacheme_sql.writes import rows_in_lock_order

__all__ = ["SQLiteStorage"]

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
# SQLite allows 32766 bound parameters per statement; larger batches are read in chunks.
_MAX_PARAMS = 10_000


class _Pool:
    """The aiosqlite connections of one event loop, and the queue of the idle ones."""

    def __init__(self) -> None:
        self.connections: list[aiosqlite.Connection] = []
        self.idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()


class SQLiteStorage(SqlStorage[_Pool]):
    """Cache rows in an SQLite database file (WAL journal, one thread per pooled connection)."""

    default_pool_size = 4

    def _parse_url(self, url: str, options: dict[str, Any]) -> None:
        if options:
            raise StorageConfigError(f"unknown option(s) for sqlite:// storage: {', '.join(sorted(options))}")
        prefix = "sqlite://"
        if not url.lower().startswith(prefix) or not url[len(prefix) :].startswith("/"):
            raise StorageConfigError(
                "sqlite url must be 'sqlite:///relative/path.db' or 'sqlite:////absolute/path.db', "
                f"got {url!r}"
            )
        path = url[len(prefix) + 1 :]
        if not path or "?" in path:
            raise StorageConfigError(f"sqlite url {url!r} needs a file path and takes no query string")
        self.path = path
        if path == ":memory:":
            self.pool_size = 1  # every connection to :memory: would be its own database
        t = self.table
        live = f"(expire IS NULL OR expire > {_NOW})"
        self._sql_get = f"SELECT cache_key, value FROM {t} WHERE key_hash = ? AND {live}"
        self._sql_get_many = f"SELECT cache_key, value FROM {t} WHERE key_hash IN ({{marks}}) AND {live}"
        self._sql_set = (
            f"INSERT INTO {t} (key_hash, cache_key, value, expire, updated_at) "
            f"VALUES (?, ?, ?, {_NOW} + ?, {_NOW}) "
            "ON CONFLICT (key_hash) DO UPDATE SET cache_key = excluded.cache_key, value = excluded.value, "
            "expire = excluded.expire, updated_at = excluded.updated_at"
        )
        self._sql_delete_many = f"DELETE FROM {t} WHERE key_hash IN ({{marks}})"
        self._sql_sweep = (
            f"DELETE FROM {t} WHERE rowid IN (SELECT rowid FROM {t} WHERE expire <= {_NOW} LIMIT ?)"
        )

    async def _open(self) -> _Pool:
        pool = _Pool()
        try:
            for _ in range(self.pool_size):
                connection = aiosqlite.connect(self.path, timeout=self.command_timeout, isolation_level=None)
                _daemonize(connection)
                pool.connections.append(connection)
                await asyncio.wait_for(connection, self.connect_timeout)
                if self.path != ":memory:":
                    await self._enable_wal(connection)
                    await connection.execute("PRAGMA synchronous=NORMAL")
                pool.idle.put_nowait(connection)
        except BaseException:
            await _close_connections(pool)
            raise
        return pool

    async def _enable_wal(self, connection: aiosqlite.Connection) -> None:
        """Switch the file to WAL. SQLite answers "database is locked" at once, without its busy
        timeout, when several connections switch a fresh file together: retry until command_timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout
        while True:
            try:
                await connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.01)

    async def _close_pool(self, pool: _Pool) -> None:
        """Wait (up to close_timeout) for the connections in use to come back, then close them all."""
        try:
            await asyncio.wait_for(_close_when_idle(pool), self.close_timeout)
        except (Exception, asyncio.CancelledError):
            self._abandon_pool(pool)  # a thread stuck in a statement ends once it returns
            raise

    def _abandon_pool(self, pool: _Pool) -> None:
        connections, pool.connections = pool.connections, []
        for connection in connections:
            connection.stop()  # the worker thread closes its sqlite3 connection and ends

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        idle = (await self._pool()).idle
        connection = await idle.get()
        try:
            yield connection
        except BaseException:
            # Interrupted (cancelled, failed), the work may have left a transaction open (a BEGIN
            # still queued on the connection's thread, say), holding the database's write lock:
            # the connection goes back to the pool after a ROLLBACK queued behind that work.
            asyncio.get_running_loop().create_task(_rollback_then_return(connection, idle))
            raise
        idle.put_nowait(connection)

    async def _create_table(self) -> None:
        async with self._connection() as connection:
            # A table of another program is refused before the DDL indexes a column it may not have.
            if not await self._columns(connection):
                for statement in ddl_statements("sqlite", self.table):
                    await connection.execute(statement)
            check_columns("sqlite", self.table, await self._columns(connection))

    async def _check_table(self) -> None:
        async with self._connection() as connection:
            check_columns("sqlite", self.table, await self._columns(connection))

    async def _columns(self, connection: aiosqlite.Connection) -> list[str]:
        """The column names of ``self.table`` (lower-cased); empty when there is no such table."""
        async with connection.execute(f"PRAGMA table_info({self.table})") as cursor:
            return [str(row[1]).lower() for row in await cursor.fetchall()]

    async def _sweep_batch(self, limit: int) -> int:
        async with self._connection() as connection:
            cursor = await connection.execute(self._sql_sweep, (limit,))
            return cursor.rowcount

    async def get(self, key: str) -> bytes | None:
        async with (
            self._connection() as connection,
            connection.execute(self._sql_get, (key_hash(key),)) as cursor,
        ):
            row = await cursor.fetchone()
        return row_value(row, key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        wanted = set(keys)
        hashes = [key_hash(key) for key in wanted]
        found: dict[str, bytes] = {}
        async with self._connection() as connection:
            for start in range(0, len(hashes), _MAX_PARAMS):
                chunk = hashes[start : start + _MAX_PARAMS]
                query = self._sql_get_many.format(marks=", ".join("?" * len(chunk)))
                async with connection.execute(query, chunk) as cursor:
                    found.update(rows_by_key(await cursor.fetchall(), wanted))
        return found

    async def set(self, key: str, value: bytes, ttl: timedelta | None) -> None:
        expire = None if ttl is None else ttl.total_seconds()
        async with self._connection() as connection:
            await connection.execute(self._sql_set, (key_hash(key), key, value, expire))

    async def set_many(self, items: Mapping[str, bytes], ttl: timedelta | None) -> None:
        if not items:
            return
        # REAL seconds hold any timedelta (timedelta.max included): no cap. BEGIN IMMEDIATE takes the
        # write lock first (waiting up to command_timeout for it), so batches are serialised and cannot
        # deadlock; the rows go in key_hash order all the same, like on the other databases.
        expire = None if ttl is None else ttl.total_seconds()
        rows = [(hashed, key, value, expire) for hashed, key, value in rows_in_lock_order(items)]
        async with self._connection() as connection:
            await connection.execute("BEGIN IMMEDIATE")
            try:
                await connection.executemany(self._sql_set, rows)
            except BaseException:
                await asyncio.shield(connection.execute("ROLLBACK"))
                raise
            await connection.execute("COMMIT")

    async def delete_many(self, keys: Sequence[str]) -> None:
        hashes = [key_hash(key) for key in set(keys)]
        async with self._connection() as connection:
            for start in range(0, len(hashes), _MAX_PARAMS):
                chunk = hashes[start : start + _MAX_PARAMS]
                await connection.execute(
                    self._sql_delete_many.format(marks=", ".join("?" * len(chunk))), chunk
                )


async def _close_when_idle(pool: _Pool) -> None:
    for _ in pool.connections:
        await pool.idle.get()
    await _close_connections(pool)


async def _close_connections(pool: _Pool) -> None:
    connections, pool.connections = pool.connections, []
    for connection in connections:
        with contextlib.suppress(Exception):
            await connection.close()


async def _rollback_then_return(
    connection: aiosqlite.Connection, idle: asyncio.Queue[aiosqlite.Connection]
) -> None:
    """End any transaction the connection is in, then make it available again."""
    try:
        await connection.execute("ROLLBACK")
    except Exception:  # "no transaction is active": nothing to undo
        pass
    finally:
        idle.put_nowait(connection)


def _daemonize(connection: aiosqlite.Connection) -> None:
    """Make the connection's worker thread a daemon thread (it is not started yet).

    aiosqlite runs each connection in a thread of its own that is not a
    daemon: a program that ends without closing the connection would wait for
    it for ever. Pools are closed when their loop shuts down; this covers a
    loop closed without that (``loop.close()`` with no ``shutdown_asyncgens()``).
    """
    thread = getattr(connection, "_thread", None)
    if isinstance(thread, threading.Thread) and not thread.is_alive():
        thread.daemon = True
