"""The SQL storages in the conformance suite: each case gets its own fresh table, dropped afterwards."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import cacheme
from cacheme.storage import BaseStorage
from tests.conformance.cases import StorageCase
from tests.fixtures.sql_servers import MYSQL_URL, POSTGRES_URL, drop_table


def _fresh_table() -> str:
    return f"conf_{uuid.uuid4().hex[:16]}"


async def _connected(url: str, request: pytest.FixtureRequest, **options: Any) -> BaseStorage:
    table = _fresh_table()
    storage = cacheme.Storage(url, table=table, **options)
    # Added before the suite's own close runs (finalizers are LIFO), so the table is dropped after it.
    request.addfinalizer(lambda: asyncio.run(drop_table(url, table)))
    await storage.connect()
    return storage


async def _sqlite(request: pytest.FixtureRequest) -> BaseStorage:
    tmp_path = request.getfixturevalue("tmp_path")
    return await _connected(f"sqlite:///{tmp_path}/cache.db", request)


async def _postgresql(request: pytest.FixtureRequest) -> BaseStorage:
    return await _connected(POSTGRES_URL, request)


async def _mysql(request: pytest.FixtureRequest) -> BaseStorage:
    return await _connected(MYSQL_URL, request)


CASES = [
    StorageCase(id="sqlite", make=_sqlite),
    StorageCase(id="postgresql", make=_postgresql),
    StorageCase(id="mysql", make=_mysql),
]
