"""MongoDB in the conformance suite: the stand-in by default, a real server with CACHEME_TEST_MONGO_URL."""

from __future__ import annotations

import pytest

import cacheme
from cacheme.storage import BaseStorage
from tests.conformance.cases import StorageCase
from tests.fixtures.mongo_servers import drop_database, new_database_name, real_mongo_url


async def _make(request: pytest.FixtureRequest) -> BaseStorage:
    url: str = request.getfixturevalue("mongo_url")
    database = new_database_name()
    request.addfinalizer(lambda: drop_database(url, database))
    storage = cacheme.Storage(url, database=database, collection="cache")
    await storage.connect()
    return storage


# Reads filter out expired documents themselves, so no slack for the TTL monitor is needed.
CASES = [StorageCase(id="mongo" if real_mongo_url() else "mongo-standin", make=_make)]
