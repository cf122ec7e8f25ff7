"""Raw access to the three databases, next to (not through) the storages under test."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

import cacheme
from cacheme.entry import LEASE_MARK
from cacheme_sql.base import SqlStorage, key_hash
from cacheme_sql.postgresql_lease import lease_channel_for
from tests.fixtures.sql_servers import MYSQL_URL, POSTGRES_URL, drop_table, raw_mysql, raw_postgres

KINDS = ("sqlite", "postgresql", "mysql")


def fresh_table(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@dataclass
class Database:
    """One backend for one test: its URL, a fresh table name, and raw SQL next to the storage."""

    kind: str
    url: str
    table: str

    def storage(self, **options: Any) -> SqlStorage[Any]:
        options.setdefault("table", self.table)
        built = cacheme.Storage(self.url, **options)
        assert isinstance(built, SqlStorage)
        return built

    async def fetch(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``query`` (placeholders: '?' for sqlite, '$1' for postgresql, '%s' for mysql)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=5) as connection:
                rows = connection.execute(query, tuple(args)).fetchall()
            connection.close()
            return [tuple(row) for row in rows]
        if self.kind == "postgresql":
            pg = await raw_postgres()
            try:
                return [tuple(row) for row in await pg.fetch(query, *args)]
            finally:
                await pg.close()
        mysql = await raw_mysql()
        try:
            async with mysql.cursor() as cursor:
                await cursor.execute(query, tuple(args))
                return [tuple(row) for row in await cursor.fetchall()]
        finally:
            mysql.close()

    async def execute(self, query: str) -> None:
        await self.fetch(query)

    async def count_rows(self, table: str | None = None) -> int:
        rows = await self.fetch(f"SELECT COUNT(*) FROM {table or self.table}")
        return int(rows[0][0])

    async def columns(self, table: str) -> list[tuple[Any, ...]]:
        """Name, type and nullability of every column of ``table``, in order."""
        if self.kind == "sqlite":
            return [(row[1], row[2], row[3]) for row in await self.fetch(f"PRAGMA table_info({table})")]
        if self.kind == "postgresql":
            query = (
                "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
                "WHERE table_name = $1 ORDER BY ordinal_position"
            )
        else:
            query = (
                "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY, COLLATION_NAME "
                "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
                "ORDER BY ORDINAL_POSITION"
            )
        return await self.fetch(query, [table])

    async def drop(self, table: str | None = None) -> None:
        if self.kind != "sqlite":
            await drop_table(self.url, table or self.table)
        else:
            await self.execute(f"DROP TABLE IF EXISTS {table or self.table}")


def database(kind: str, tmp_path: Any) -> Database:
    url = {"sqlite": f"sqlite:///{tmp_path}/cache.db", "postgresql": POSTGRES_URL, "mysql": MYSQL_URL}[kind]
    return Database(kind=kind, url=url, table=fresh_table())


class LeaseTable:
    """One test's PostgreSQL cache table, read and written by a raw connection, as another process of
    the fleet would: values, lease marks, notices on the leases' channel."""

    def __init__(self, table: str, connection: asyncpg.Connection) -> None:
        self.table = table
        self.connection = connection
        self.channel = lease_channel_for(table)

    async def put(self, key: str, value: bytes, expire_ms: int | None = None) -> None:
        """Write ``value`` for ``key`` (expiring in ``expire_ms``, negative: expired already; None: never)."""
        await self.connection.execute(
            f"INSERT INTO {self.table} (key_hash, cache_key, value, expire, updated_at) "
            "VALUES ($1, $2, $3, now() + $4::bigint * interval '1 millisecond', now()) "
            "ON CONFLICT (key_hash) DO UPDATE SET value = EXCLUDED.value, expire = EXCLUDED.expire",
            key_hash(key),
            key,
            value,
            expire_ms,
        )

    async def hold(self, key: str, ms: int = 10_000) -> bytes:
        """Take the lease of ``key`` as another process would; its mark."""
        taken = LEASE_MARK + uuid.uuid4().bytes
        await self.put(key, taken, ms)
        return taken

    async def delete(self, key: str) -> None:
        await self.connection.execute(f"DELETE FROM {self.table} WHERE key_hash = $1", key_hash(key))

    async def row(self, key: str) -> tuple[bytes, float | None] | None:
        """The live row of ``key``: its value and the seconds it has left (None: never expires)."""
        found = await self.connection.fetchrow(
            f"SELECT value, extract(epoch FROM expire - now())::float8 FROM {self.table} "
            "WHERE key_hash = $1 AND cache_key = $2 AND (expire IS NULL OR expire > now())",
            key_hash(key),
            key,
        )
        return None if found is None else (bytes(found[0]), found[1])

    async def raw(self, key: str) -> bytes | None:
        found = await self.row(key)
        return None if found is None else found[0]

    async def publish_notice(self, keys: list[str]) -> None:
        payload = json.dumps({"v": 1, "from": "another-process", "keys": keys})
        await self.connection.execute("SELECT pg_notify($1, $2)", self.channel, payload)
