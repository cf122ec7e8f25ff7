"""A table of the configured name that is not a cacheme table is refused by register_storage."""

from __future__ import annotations

import itertools
import re

import pytest

import cacheme
from cacheme_sql.ddl import ddl_statements
from cacheme_sql.schema import EXPECTED_COLUMNS
from tests.sql.support import Database

_names = itertools.count()


def storage_name(db: Database) -> str:
    return f"foreign-{db.kind}-{next(_names)}"


@pytest.mark.parametrize("create_table", [True, False])
async def test_a_table_with_other_columns_is_refused_naming_the_columns(
    db: Database, create_table: bool
) -> None:
    await db.execute(f"CREATE TABLE {db.table} (id INTEGER PRIMARY KEY, cache_key TEXT, value TEXT)")
    await db.execute(f"INSERT INTO {db.table} (id, cache_key, value) VALUES (1, 'theirs', 'kept')")
    name = storage_name(db)
    with pytest.raises(cacheme.StorageConfigError) as raised:
        await cacheme.register_storage(name, db.storage(create_table=create_table))
    message = str(raised.value)
    assert f"table {db.table!r} is not a cacheme table" in message
    assert "lacks column(s) key_hash, expire, updated_at" in message
    assert "needs the columns key_hash, cache_key, value, expire, updated_at" in message
    assert re.search(r"the table has id, cache_key, value\b", message), message
    assert name not in cacheme.registered_storages()
    # Their table is left as it was.
    assert [column[0].lower() for column in await db.columns(db.table)] == ["id", "cache_key", "value"]
    assert await db.fetch(f"SELECT id, cache_key, value FROM {db.table}") == [(1, "theirs", "kept")]


@pytest.mark.parametrize("create_table", [True, False])
async def test_a_cacheme_table_with_extra_columns_and_upper_case_names_is_accepted(
    db: Database, create_table: bool
) -> None:
    for statement in ddl_statements(db.kind, db.table):
        for column in EXPECTED_COLUMNS:
            statement = re.sub(rf"\b{column}\b", column.upper(), statement)
        await db.execute(statement)
    await db.execute(f"ALTER TABLE {db.table} ADD COLUMN note TEXT NULL")
    name = storage_name(db)
    storage = db.storage(create_table=create_table)
    await cacheme.register_storage(name, storage)
    try:
        await storage.set_many({"a": b"1", "b": b"2"}, None)
        assert await storage.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}
    finally:
        await cacheme.unregister_storage(name)


@pytest.mark.parametrize("create_table", [True, False])
async def test_our_own_table_is_accepted(db: Database, create_table: bool) -> None:
    first = db.storage()
    await first.connect()  # creates the table
    await first.set("kept", b"yes", None)
    await first.close()
    name = storage_name(db)
    storage = db.storage(create_table=create_table)
    await cacheme.register_storage(name, storage)
    try:
        assert await storage.get("kept") == b"yes"
    finally:
        await cacheme.unregister_storage(name)


# The table cacheme 0.3.0 asked its users to create (its columns; the same default name,
# cacheme_data): a user migrating with that table in place gets the error, not a broken cache.
TABLE_OF_030 = {
    "sqlite": "CREATE TABLE {table} (id INTEGER PRIMARY KEY, key VARCHAR(512) UNIQUE, value BLOB, "
    "expire DATETIME, updated_at DATETIME)",
    "postgresql": "CREATE TABLE {table} (id SERIAL PRIMARY KEY, key VARCHAR(512) UNIQUE, value BYTEA, "
    "expire TIMESTAMP WITH TIME ZONE, updated_at TIMESTAMP WITH TIME ZONE DEFAULT now())",
    "mysql": "CREATE TABLE {table} (id INTEGER AUTO_INCREMENT PRIMARY KEY, `key` VARCHAR(512) UNIQUE, "
    "value BLOB, expire DATETIME(6), updated_at DATETIME(6))",
}


async def test_a_table_made_for_cacheme_030_is_refused_and_left_alone(db: Database) -> None:
    await db.execute(TABLE_OF_030[db.kind].format(table=db.table))
    name = storage_name(db)
    with pytest.raises(cacheme.StorageConfigError) as raised:
        await cacheme.register_storage(name, db.storage())
    message = str(raised.value)
    assert f"table {db.table!r} is not a cacheme table" in message
    assert "lacks column(s) key_hash, cache_key" in message
    assert [column[0].lower() for column in await db.columns(db.table)] == [
        "id",
        "key",
        "value",
        "expire",
        "updated_at",
    ]
