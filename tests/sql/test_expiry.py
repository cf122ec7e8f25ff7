"""Expired rows are never read, and are deleted by sweep() and by the background sweeper."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from cacheme_sql.ddl import ddl_statements
from tests.sql.support import Database


async def wait_until_rows(db: Database, expected: int, deadline: float = 10.0) -> int:
    """Poll the raw row count until it is ``expected`` (or the deadline passes); return the last count."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    count = await db.count_rows()
    while count != expected and loop.time() < end:
        await asyncio.sleep(0.05)
        count = await db.count_rows()
    return count


async def test_expired_rows_are_not_read_and_sweep_deletes_them_in_batches(db: Database) -> None:
    storage = db.storage(sweep_interval=None, sweep_batch_size=2)
    await storage.connect()
    try:
        await storage.set_many({f"short:{i}": b"s" for i in range(5)}, timedelta(milliseconds=300))
        await storage.set("forever", b"f", None)
        await storage.set("later", b"l", timedelta(hours=1))
        assert await storage.get("short:0") == b"s"
        await asyncio.sleep(0.6)
        assert await storage.get("short:0") is None
        assert await storage.get_many([f"short:{i}" for i in range(5)] + ["forever", "later"]) == {
            "forever": b"f",
            "later": b"l",
        }
        assert await db.count_rows() == 7  # still there: reads filter, they do not delete
        assert await storage.sweep() == 5  # three batches of at most 2
        assert await db.count_rows() == 2
        assert await storage.sweep() == 0
        # An expired row that is written again is live again.
        await storage.set("forever", b"f2", timedelta(milliseconds=100))
        await asyncio.sleep(0.3)
        assert await storage.get("forever") is None
        await storage.set("forever", b"f3", None)
        assert await storage.get("forever") == b"f3"
    finally:
        await storage.close()


async def test_background_sweeper_deletes_survives_errors_and_stops_on_close(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    storage = db.storage(sweep_interval=0.1, sweep_batch_size=10)
    await storage.connect()
    try:
        await storage.set_many({f"k{i}": b"v" for i in range(25)}, timedelta(milliseconds=100))
        await storage.set("forever", b"f", None)
        assert await wait_until_rows(db, 1) == 1
        # Fault: the table disappears under the sweeper; it logs and keeps going.
        with caplog.at_level(logging.WARNING, logger="cacheme.sql"):
            await db.drop()
            await asyncio.sleep(0.4)
        assert any("sweeping" in record.getMessage() for record in caplog.records)
        for statement in ddl_statements(db.kind, db.table):
            await db.execute(statement)
        await storage.set_many({f"again{i}": b"v" for i in range(5)}, timedelta(milliseconds=100))
        assert await db.count_rows() == 5
        assert await wait_until_rows(db, 0) == 0
        sweeper = storage._sweeper
        assert sweeper is not None and not sweeper.done()
    finally:
        await storage.close()
    assert sweeper.done()
    assert storage._sweeper is None


async def test_sweeper_disabled_leaves_expired_rows_to_sweep(db: Database) -> None:
    storage = db.storage(sweep_interval=None)
    await storage.connect()
    try:
        assert storage._sweeper is None
        await storage.set("gone", b"v", timedelta(milliseconds=50))
        await asyncio.sleep(0.3)
        assert await db.count_rows() == 1
        assert await storage.sweep() == 1
    finally:
        await storage.close()
