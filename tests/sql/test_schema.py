"""The table creates itself (also when several storages race), and the packaged DDL is the same schema."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

import cacheme
from cacheme_sql.ddl import ddl_text
from tests.sql.support import Database, fresh_table


def run_packaged_ddl_with_the_cli(db: Database, table: str) -> None:
    """What a user with create_table=False does: run the shipped .sql file with the database's own tool."""
    script = ddl_text(db.kind).replace("cacheme_data", table)
    if db.kind == "sqlite":
        command = ["sqlite3", db.url.removeprefix("sqlite:///")]
    elif db.kind == "postgresql":
        command = ["psql", "-v", "ON_ERROR_STOP=1", "-q", db.url]
    else:
        command = ["mysql", "-h127.0.0.1", "-P3306", "-uroot", "test"]
    subprocess.run(command, input=script, text=True, check=True, capture_output=True, timeout=30)


async def test_create_table_false_works_with_the_packaged_ddl(db: Database) -> None:
    run_packaged_ddl_with_the_cli(db, db.table)
    storage = db.storage(create_table=False)
    await storage.connect()
    try:
        await storage.set("k", b"v", None)
        assert await storage.get("k") == b"v"
        assert await db.count_rows() == 1
    finally:
        await storage.close()


async def test_create_table_false_refuses_a_missing_table_at_connect(db: Database) -> None:
    storage = db.storage(create_table=False)
    with pytest.raises(Exception, match=db.table):
        await storage.connect()
    await storage.close()


async def test_created_schema_is_the_packaged_schema(db: Database) -> None:
    storage = db.storage()
    await storage.connect()
    await storage.close()
    by_hand = fresh_table("byhand")
    run_packaged_ddl_with_the_cli(db, by_hand)
    try:
        created, from_file = await db.columns(db.table), await db.columns(by_hand)
        assert [column[0] for column in created] == ["key_hash", "cache_key", "value", "expire", "updated_at"]
        assert created == from_file
    finally:
        await db.drop(by_hand)


async def test_storages_created_at_the_same_moment_on_a_fresh_table_all_work(db: Database) -> None:
    storages = [db.storage(pool_size=2) for _ in range(4)]
    names = [f"{db.table}-{i}" for i in range(len(storages))]
    await asyncio.gather(*(cacheme.register_storage(n, s) for n, s in zip(names, storages, strict=True)))
    try:
        await storages[0].set("shared", b"from-0", None)
        for storage in storages:
            assert await storage.get("shared") == b"from-0"
        await storages[3].set_many({"shared": b"from-3"}, None)
        assert await storages[1].get("shared") == b"from-3"
        assert await db.count_rows() == 1
    finally:
        await asyncio.gather(*(cacheme.unregister_storage(n) for n in names))


async def test_connect_on_an_existing_table_keeps_its_rows(db: Database) -> None:
    first = db.storage()
    await first.connect()
    await first.set("kept", b"yes", None)
    await first.close()
    second = db.storage()
    await second.connect()
    try:
        assert await second.get("kept") == b"yes"
    finally:
        await second.close()


async def test_create_table_false_on_a_missing_table_is_a_config_error_naming_the_schema_file(
    db: Database,
) -> None:
    name = f"missing-{db.table}"
    with pytest.raises(cacheme.StorageConfigError) as raised:
        await cacheme.register_storage(name, db.storage(create_table=False))
    message = str(raised.value)
    assert f"{db.kind} table {db.table!r} does not exist" in message
    assert f"cacheme_sql/sql/{db.kind}.sql" in message
    assert name not in cacheme.registered_storages()
