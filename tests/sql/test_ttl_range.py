"""A ttl longer than a database's dates reach is capped, and the row is written and read back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cacheme_sql import mysql, postgresql
from tests.sql.support import Database

# The longest ttl each database keeps; SQLite's REAL seconds hold any timedelta.
LONGEST = {"sqlite": timedelta.max, "postgresql": postgresql.MAX_TTL, "mysql": mysql.MAX_TTL}

DAYS_LEFT = {
    "sqlite": "(expire - (julianday('now') - 2440587.5) * 86400.0) / 86400.0",
    "postgresql": "EXTRACT(EPOCH FROM expire - now()) / 86400",
    "mysql": "TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), expire) / 86400",
}


async def days_left(db: Database) -> dict[str, float]:
    """How many days each row of the table has left to live, by the database's clock."""
    rows = await db.fetch(f"SELECT cache_key, {DAYS_LEFT[db.kind]} FROM {db.table}")
    return {key: float(days) for key, days in rows}


@pytest.mark.parametrize("ttl", [timedelta(days=106_752), timedelta(days=3_000_000), timedelta.max])
async def test_a_very_long_ttl_is_written_capped_and_read_back(db: Database, ttl: timedelta) -> None:
    storage = db.storage(sweep_interval=None)
    await storage.connect()
    try:
        await storage.set("one", b"1", ttl)
        await storage.set_many({"two": b"2", "three": b"3"}, ttl)
        assert await storage.get("one") == b"1"
        assert await storage.get_many(["two", "three"]) == {"two": b"2", "three": b"3"}
        expected = min(ttl, LONGEST[db.kind]) / timedelta(days=1)
        left = await days_left(db)
        assert left.keys() == {"one", "two", "three"}
        for days in left.values():
            assert expected - 1 < days <= expected
    finally:
        await storage.close()
