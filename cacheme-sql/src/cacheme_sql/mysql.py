"""``mysql://user:password@host:3306/database``: a cache table in MySQL 8 or MariaDB, through aiomysql.

Expiry uses the database clock (``UTC_TIMESTAMP(6)``, independent of the
session time zone) when a row is written, read and swept. aiomysql has no
read timeout of its own, so every operation runs under ``command_timeout`` and
a connection that failed or timed out is closed instead of going back to the pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiomysql

from cacheme.errors import StorageConfigError
from cacheme.storage import capped_ttl
from cacheme_sql.base import SqlStorage, driver_options, key_hash, row_value, rows_by_key
from cacheme_sql.ddl import ddl_statements
from cacheme_sql.schema import check_columns
from cacheme_sql.writes import Row, retry_once_on_deadlock, rows_in_lock_order

__all__ = ["MAX_TTL", "MySQLStorage"]

T = TypeVar("T")

# Rows of one batch write are split into statements of about this many bytes, all in one
# transaction, so that a statement stays under the server's max_allowed_packet (16 MiB by default).
_STATEMENT_BYTES = 4 * 1024 * 1024
_NOW = "UTC_TIMESTAMP(6)"

# DATETIME ends on 9999-12-31: a longer ttl (timedelta.max means "for ever") is stored as 7,000
# years, which keeps UTC_TIMESTAMP(6) + INTERVAL ttl in range until the year 2999.
MAX_TTL = timedelta(days=365 * 7_000)

_SQL_COLUMNS = (
    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
    "ORDER BY ORDINAL_POSITION"
)
_DEADLOCK = 1213  # ER_LOCK_DEADLOCK: InnoDB rolled the whole transaction back
# ER_LOCK_WAIT_TIMEOUT (1205) is not retried: the write already waited innodb_lock_wait_timeout.


def _is_deadlock(error: BaseException) -> bool:
    """Whether the server killed the transaction to break a deadlock (error 1213)."""
    return isinstance(error, aiomysql.OperationalError) and error.args[:1] == (_DEADLOCK,)


class MySQLStorage(SqlStorage[aiomysql.Pool]):
    """Cache rows in MySQL/MariaDB. Extra options are passed to ``aiomysql.connect`` (ssl, ...)."""

    def _parse_url(self, url: str, options: dict[str, Any]) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port or 3306
        except ValueError as error:
            raise StorageConfigError(f"malformed mysql url: {error}") from error
        database = parts.path.lstrip("/")
        if parts.scheme.lower() != "mysql" or not database or "/" in database or parts.query:
            raise StorageConfigError(
                f"mysql url must look like 'mysql://user:password@host:3306/database' (no query), got "
                f"{self._safe_url()!r}"
            )
        self._connect_options: dict[str, Any] = {
            "host": parts.hostname or "localhost",
            "port": port,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "db": unquote(database),
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": self.connect_timeout,
        }
        self._connect_options.update(driver_options("mysql", options, aiomysql.connect))
        t = self.table
        live = f"(expire IS NULL OR expire > {_NOW})"
        self._sql_get = f"SELECT cache_key, value FROM {t} WHERE key_hash = %s AND {live}"
        self._sql_get_many = f"SELECT cache_key, value FROM {t} WHERE key_hash IN ({{marks}}) AND {live}"
        self._sql_insert = f"INSERT INTO {t} (key_hash, cache_key, value, expire, updated_at) VALUES "
        self._sql_row = f"(%s, %s, %s, {_NOW} + INTERVAL %s MICROSECOND, {_NOW})"
        # VALUES(col) is deprecated (not removed) in MySQL 8.0.20+; the "AS new" alias that replaces
        # it does not exist in MariaDB, so VALUES(col) is the form both accept.
        self._sql_upsert = (
            " ON DUPLICATE KEY UPDATE cache_key = VALUES(cache_key), value = VALUES(value), "
            "expire = VALUES(expire), updated_at = VALUES(updated_at)"
        )
        self._sql_delete_many = f"DELETE FROM {t} WHERE key_hash IN ({{marks}})"
        self._sql_sweep = f"DELETE FROM {t} WHERE expire <= {_NOW} ORDER BY expire LIMIT %s"

    async def _open(self) -> aiomysql.Pool:
        return await asyncio.wait_for(
            aiomysql.create_pool(
                minsize=1, maxsize=self.pool_size, pool_recycle=3600, **self._connect_options
            ),
            self.connect_timeout * 2,
        )

    async def _close_pool(self, pool: aiomysql.Pool) -> None:
        pool.close()
        try:
            await asyncio.wait_for(pool.wait_closed(), self.close_timeout)
        except (Exception, asyncio.CancelledError):
            pool.terminate()
            raise

    async def _run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """``work(cursor)`` on a pooled connection, bounded by command_timeout (pool wait included)."""
        return await asyncio.wait_for(self._run_unbounded(work), self.command_timeout)

    async def _run_unbounded(self, work: Callable[[Any], Awaitable[T]]) -> T:
        pool = await self._pool()
        connection = await pool.acquire()
        try:
            async with connection.cursor() as cursor:
                return await work(cursor)
        except BaseException:
            # Killed, timed out or half-read: never hand this connection out again.
            connection.close()
            raise
        finally:
            await pool.release(connection)

    async def _create_table(self) -> None:
        async def create(cursor: Any) -> None:
            if not await self._columns(cursor):
                # Concurrent creators get an "already exists" note (IF NOT EXISTS); keep it out of warnings.
                await cursor.execute("SET SESSION sql_notes = 0")
                for statement in ddl_statements("mysql", self.table):
                    await cursor.execute(statement)
                await cursor.execute("SET SESSION sql_notes = 1")
            check_columns("mysql", self.table, await self._columns(cursor))

        await self._run(create)

    async def _check_table(self) -> None:
        async def check(cursor: Any) -> None:
            check_columns("mysql", self.table, await self._columns(cursor))

        await self._run(check)

    async def _columns(self, cursor: Any) -> list[str]:
        """The column names of ``self.table`` (lower-cased); empty when there is no such table."""
        await cursor.execute(_SQL_COLUMNS, (self.table,))
        return [str(row[0]).lower() for row in await cursor.fetchall()]

    async def _sweep_batch(self, limit: int) -> int:
        async def sweep(cursor: Any) -> int:
            await cursor.execute(self._sql_sweep, (limit,))
            return int(cursor.rowcount)

        return await self._run(sweep)

    async def get(self, key: str) -> bytes | None:
        async def read(cursor: Any) -> Any:
            await cursor.execute(self._sql_get, (key_hash(key),))
            return await cursor.fetchone()

        row = await self._run(read)
        return row_value(row, key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        wanted = set(keys)
        hashes = [key_hash(key) for key in wanted]

        async def read(cursor: Any) -> Any:
            await cursor.execute(self._sql_get_many.format(marks=", ".join(["%s"] * len(hashes))), hashes)
            return await cursor.fetchall()

        rows = await self._run(read)
        return rows_by_key(rows, wanted)

    async def set(self, key: str, value: bytes, ttl: timedelta | None) -> None:
        await self.set_many({key: value}, ttl)

    async def set_many(self, items: Mapping[str, bytes], ttl: timedelta | None) -> None:
        """Upsert the rows in key_hash order (no deadlock between batches), one transaction; a deadlock
        is retried once."""
        if not items:
            return
        capped = capped_ttl(ttl, MAX_TTL)
        micros = None if capped is None else capped // timedelta(microseconds=1)
        statements = self._upserts(rows_in_lock_order(items), micros)

        async def write(cursor: Any) -> None:
            if len(statements) > 1:
                await cursor.execute("START TRANSACTION")
            for query, params in statements:
                await cursor.execute(query, params)
            if len(statements) > 1:
                await cursor.execute("COMMIT")

        await retry_once_on_deadlock(lambda: self._run(write), _is_deadlock)

    def _upserts(self, rows: Sequence[Row], micros: int | None) -> list[tuple[str, list[Any]]]:
        """``(query, params)`` of the statements that write ``rows`` in their order, each holding
        about ``_STATEMENT_BYTES`` of keys and values at most (and at least one row)."""
        batches: list[list[Row]] = [[]]
        size = 0
        for row in rows:
            row_size = len(row[1]) + len(row[2])
            if batches[-1] and size + row_size > _STATEMENT_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(row)
            size += row_size
        return [
            (
                self._sql_insert + ", ".join([self._sql_row] * len(batch)) + self._sql_upsert,
                [param for row in batch for param in (*row, micros)],
            )
            for batch in batches
        ]

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        hashes = [key_hash(key) for key in set(keys)]

        async def delete(cursor: Any) -> None:
            await cursor.execute(self._sql_delete_many.format(marks=", ".join(["%s"] * len(hashes))), hashes)

        await self._run(delete)
