"""Every backend as a URL and options, for tests that build storages themselves.

Those tests build storages in threads, in other event loops and in
subprocesses. Each backend gets a place of its own (a fresh table, Redis
database or Mongo database), removed afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.mongo_servers import drop_database, new_database_name
from tests.fixtures.sql_servers import MYSQL_URL, POSTGRES_URL, drop_table

BACKENDS = ["sqlite", "postgresql", "mysql", "redis", "redis-cluster", "mongo"]


@dataclass
class Backend:
    """How to build one backend's storage: ``cacheme.Storage(url, **options)``."""

    id: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    table = f"loops_{uuid.uuid4().hex[:16]}"
    if kind == "sqlite":
        yield Backend(kind, f"sqlite:///{tmp_path}/cache.db", {"table": table})
    elif kind in ("postgresql", "mysql"):
        sql_url = POSTGRES_URL if kind == "postgresql" else MYSQL_URL
        yield Backend(kind, sql_url, {"table": table})
        asyncio.run(drop_table(sql_url, table))
    elif kind == "redis":
        url: str = request.getfixturevalue("redis_shared_url")
        database: int = request.getfixturevalue("redis_shared_db")
        yield Backend(kind, f"{url}/{database}")
    elif kind == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        yield Backend(kind, cluster.url, {"cluster": True})
    else:
        mongo_url: str = request.getfixturevalue("mongo_url")
        name = new_database_name()
        # The stand-in (mongomock behind a wire-protocol server, in this process) scans every document
        # per upsert: with four threads writing it can take longer than the default 5 s operation timeout.
        yield Backend(kind, mongo_url, {"database": name, "timeout": 30})
        drop_database(mongo_url, name)
