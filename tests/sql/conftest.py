from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.sql.support import KINDS, Database, database


@pytest_asyncio.fixture(params=KINDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """One backend with a fresh table name; the table is dropped afterwards."""
    found = database(request.param, tmp_path)
    yield found
    await found.drop()


@pytest_asyncio.fixture(params=["postgresql", "mysql"])
async def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """Like ``db``, for the two network databases only."""
    found = database(request.param, tmp_path)
    yield found
    await found.drop()
