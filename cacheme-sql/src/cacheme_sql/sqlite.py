"""``sqlite:///relative.db`` and ``sqlite:////absolute/path.db``: a cache table in an SQLite file.

Times come from SQLite's own clock (``julianday('now')``, Unix seconds as REAL),
which for a local file is the host clock every process on the host shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import aiosqlite

from cacheme.errors import StorageConfigError
from cacheme_sql.base import SqlStorage, key_hash, row_value, rows_by_key
from cacheme_sql.ddl import ddl_statements

__all__ = ["SQLiteStorage"]

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
# SQLite allows 32766 bound parameters per statement; larger batches are read in chunks.
_MAX_PARAMS = 10_000


class SQLiteStorage(SqlStorage):
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
        self._idle: asyncio.Queue[aiosqlite.Connection] | None = None
        self._connections: list[aiosqlite.Connection] = []

    async def _open(self) -> None:
        self._idle = asyncio.Queue()
        try:
            for _ in range(self.pool_size):
                connection = await asyncio.wait_for(
                    aiosqlite.connect(self.path, timeout=self.command_timeout, isolation_level=None),
                    self.connect_timeout,
                )
                self._connections.append(connection)
                if self.path != ":memory:":
                    await self._enable_wal(connection)
                    await connection.execute("PRAGMA synchronous=NORMAL")
                self._idle.put_nowait(connection)
        except BaseException:
            await self._close_pool()
            raise

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

    async def _close_pool(self) -> None:
        connections, self._connections, self._idle = self._connections, [], None
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._idle is None:
            raise RuntimeError(f"{self!r} is not connected")
        idle = self._idle
        connection = await idle.get()
        try:
            yield connection
        finally:
            idle.put_nowait(connection)

    async def _create_table(self) -> None:
        async with self._connection() as connection:
            for statement in ddl_statements("sqlite", self.table):
                await connection.execute(statement)

    async def _check_table(self) -> None:
        async with self._connection() as connection:
            await connection.execute(f"SELECT 1 FROM {self.table} WHERE 0")

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
        expire = None if ttl is None else ttl.total_seconds()
        rows = [(key_hash(key), key, value, expire) for key, value in items.items()]
        async with self._connection() as connection:
            await connection.execute("BEGIN IMMEDIATE")
            try:
                await connection.executemany(self._sql_set, rows)
            except BaseException:
                await asyncio.shield(connection.execute("ROLLBACK"))
                raise
            await connection.execute("COMMIT")

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys: Sequence[str]) -> None:
        hashes = [key_hash(key) for key in set(keys)]
        async with self._connection() as connection:
            for start in range(0, len(hashes), _MAX_PARAMS):
                chunk = hashes[start : start + _MAX_PARAMS]
                await connection.execute(
                    self._sql_delete_many.format(marks=", ".join("?" * len(chunk))), chunk
                )
