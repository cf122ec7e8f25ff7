"""Raw access to the three databases, next to (not through) the storages under test."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cacheme
from cacheme_sql.base import SqlStorage
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
