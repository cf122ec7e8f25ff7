"""``postgresql://`` and ``postgres://``: a cache table in PostgreSQL, through an asyncpg pool.

Expiry uses the database clock (``now()``) both when a row is written and when
it is read or swept, so clients whose clocks disagree still agree on expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from cacheme.errors import StorageConfigError
from cacheme.storage import capped_ttl
from cacheme_sql.base import SqlStorage, driver_options, key_hash, row_value, rows_by_key
from cacheme_sql.ddl import ddl_statements
from cacheme_sql.schema import check_columns
from cacheme_sql.writes import retry_once_on_deadlock, rows_in_lock_order

__all__ = ["MAX_TTL", "PostgreSQLStorage"]

# timestamptz ends in year 294276: a longer ttl (timedelta.max means "for ever") is stored as
# 250,000 years, which keeps now() + ttl in range for the next 40,000 years.
MAX_TTL = timedelta(days=365 * 250_000)

# The columns of the relation an unqualified table name resolves to (search_path applies).
_SQL_COLUMNS = (
    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 "
    "AND NOT attisdropped ORDER BY attnum"
)


def _is_deadlock(error: BaseException) -> bool:
    """Whether PostgreSQL killed the statement to break a deadlock (SQLSTATE 40P01)."""
    return isinstance(error, asyncpg.exceptions.DeadlockDetectedError)


class PostgreSQLStorage(SqlStorage[asyncpg.Pool]):
    """Cache rows in PostgreSQL. Extra options are passed to ``asyncpg.connect`` (ssl, server_settings...)."""

    def _parse_url(self, url: str, options: dict[str, Any]) -> None:
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises on a malformed port
        except ValueError as error:
            raise StorageConfigError(f"malformed postgresql url: {error}") from error
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise StorageConfigError(f"postgresql storage needs a postgresql:// url, got {url!r}")
        self._driver_options = driver_options(parts.scheme, options, asyncpg.connect)
        t = self.table
        live = "(expire IS NULL OR expire > now())"
        self._sql_get = f"SELECT cache_key, value FROM {t} WHERE key_hash = $1 AND {live}"
        self._sql_get_many = f"SELECT cache_key, value FROM {t} WHERE key_hash = ANY($1::bytea[]) AND {live}"
        upsert = (
            "ON CONFLICT (key_hash) DO UPDATE SET cache_key = EXCLUDED.cache_key, value = EXCLUDED.value, "
            "expire = EXCLUDED.expire, updated_at = EXCLUDED.updated_at"
        )
        self._sql_set = (
            f"INSERT INTO {t} (key_hash, cache_key, value, expire, updated_at) "
            f"VALUES ($1, $2, $3, now() + $4::interval, now()) {upsert}"
        )
        self._sql_set_many = (
            f"INSERT INTO {t} (key_hash, cache_key, value, expire, updated_at) "
            "SELECT h, k, v, now() + $4::interval, now() "
            f"FROM unnest($1::bytea[], $2::text[], $3::bytea[]) AS u(h, k, v) {upsert}"
        )
        self._sql_delete_many = f"DELETE FROM {t} WHERE key_hash = ANY($1::bytea[])"
        self._sql_sweep = (
            f"DELETE FROM {t} WHERE key_hash IN "
            f"(SELECT key_hash FROM {t} WHERE expire <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)"
        )

    async def _open(self) -> asyncpg.Pool:
        return await asyncio.wait_for(
            asyncpg.create_pool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.command_timeout,
                **self._driver_options,
            ),
            self.connect_timeout * 2,
        )

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), self.close_timeout)
        except (Exception, asyncio.CancelledError):
            pool.terminate()
            raise

    def _abandon_pool(self, pool: asyncpg.Pool) -> None:
        pool.terminate()

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Any]:
        """A connection of the running loop's pool (waiting at most command_timeout for one)."""
        pool = await self._pool()
        async with pool.acquire(timeout=self.command_timeout) as connection:
            yield connection

    async def _create_table(self) -> None:
        # CREATE TABLE IF NOT EXISTS can still fail with a unique violation in the catalog when two
        # sessions create the same table at once: a transaction-scoped advisory lock serialises them.
        lock_id = int.from_bytes(
            hashlib.sha256(f"cacheme_sql:{self.table}".encode()).digest()[:8], "big", signed=True
        )
        async with self._acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_id)
            if not await self._columns(connection):
                for statement in ddl_statements("postgresql", self.table):
                    await connection.execute(statement)
            check_columns("postgresql", self.table, await self._columns(connection))

    async def _check_table(self) -> None:
        async with self._acquire() as connection:
            check_columns("postgresql", self.table, await self._columns(connection))

    async def _columns(self, connection: Any) -> list[str]:
        """The column names of ``self.table`` as the queries see it; empty when there is no such table."""
        return [row[0] for row in await connection.fetch(_SQL_COLUMNS, self.table)]

    async def _sweep_batch(self, limit: int) -> int:
        async with self._acquire() as connection:
            status: str = await connection.execute(self._sql_sweep, limit)
        return int(status.rsplit(" ", 1)[-1])

    async def get(self, key: str) -> bytes | None:
        async with self._acquire() as connection:
            row = await connection.fetchrow(self._sql_get, key_hash(key))
        return row_value(row, key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        wanted = set(keys)
        async with self._acquire() as connection:
            rows = await connection.fetch(self._sql_get_many, [key_hash(key) for key in wanted])
        return rows_by_key(rows, wanted)

    async def set(self, key: str, value: bytes, ttl: timedelta | None) -> None:
        async with self._acquire() as connection:
            await connection.execute(self._sql_set, key_hash(key), key, value, capped_ttl(ttl, MAX_TTL))

    async def set_many(self, items: Mapping[str, bytes], ttl: timedelta | None) -> None:
        """One upsert of every row, in key_hash order (no deadlock between batches); a deadlock is retried."""
        if not items:
            return
        rows = rows_in_lock_order(items)  # unnest() yields them, and the insert locks them, in this order
        hashes, keys, values = [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows]
        interval = capped_ttl(ttl, MAX_TTL)

        async def write() -> None:
            async with self._acquire() as connection:
                await connection.execute(self._sql_set_many, hashes, keys, values, interval)

        await retry_once_on_deadlock(write, _is_deadlock)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        async with self._acquire() as connection:
            await connection.execute(self._sql_delete_many, [key_hash(key) for key in set(keys)])
