"""Issue 10, point 8: the registry connects a storage once and closes it only when no name refers to it.

Checked on PostgreSQL, where a leaked pool is visible on the server: the
storage's connections carry an application_name of this test alone.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import cacheme
from tests.fixtures.sql_servers import POSTGRES_URL, drop_table, raw_postgres


async def server_connections(application_name: str) -> int:
    connection = await raw_postgres()
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    finally:
        await connection.close()
    return int(count)


async def settled_connections(application_name: str, expected: int) -> int:
    """The count once it reached ``expected`` (closing is asynchronous on the server), or after 5 s."""
    for _ in range(100):
        count = await server_connections(application_name)
        if count == expected:
            return count
        await asyncio.sleep(0.05)
    return count


async def test_registering_one_storage_twice_connects_it_once() -> None:
    table = f"reg_{uuid.uuid4().hex[:16]}"
    application_name = f"cacheme-test-{uuid.uuid4().hex[:12]}"
    storage = cacheme.Storage(
        POSTGRES_URL, table=table, server_settings={"application_name": application_name}, sweep_interval=None
    )
    try:
        await cacheme.register_storage("reg-a", storage)
        await cacheme.register_storage("reg-a", storage)
        await cacheme.register_storage("reg-b", storage)
        # One pool (min_size 1), not one per registration.
        assert await settled_connections(application_name, 1) == 1
        await cacheme.unregister_storage("reg-a")
        await cacheme.unregister_storage("reg-b")
        assert await settled_connections(application_name, 0) == 0
    finally:
        for name in ("reg-a", "reg-b"):
            if name in cacheme.registered_storages():
                await cacheme.unregister_storage(name)
        await drop_table(POSTGRES_URL, table)


async def test_unregistering_one_name_leaves_the_other_working() -> None:
    table = f"reg_{uuid.uuid4().hex[:16]}"
    storage = cacheme.Storage(POSTGRES_URL, table=table, sweep_interval=None)

    class SharedNode(cacheme.Node):
        number: int

        def key(self) -> str:
            return f"shared:{self.number}"

        async def load(self) -> int:
            return self.number

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage="reg-still", ttl=timedelta(minutes=1))]

    try:
        await cacheme.register_storage("reg-gone", storage)
        await cacheme.register_storage("reg-still", storage)
        await cacheme.unregister_storage("reg-gone")
        assert await cacheme.get(SharedNode(number=1)) == 1
        for _ in range(500):  # the write-back runs after the caller has its value
            if not cacheme.singleflight.in_flight_count():
                break
            await asyncio.sleep(0.01)
        assert await storage.get(SharedNode(number=1).full_key()) is not None
        assert cacheme.stats(SharedNode).storage_error_count() == 0
        # Replacing a name by another storage does not close the one that is still registered elsewhere.
        await cacheme.register_storage("reg-gone", storage)
        await cacheme.register_storage("reg-gone", cacheme.Storage("local://lru", size=10))
        assert await storage.get(SharedNode(number=1).full_key()) is not None
    finally:
        for name in ("reg-gone", "reg-still"):
            if name in cacheme.registered_storages():
                await cacheme.unregister_storage(name)
        await drop_table(POSTGRES_URL, table)
