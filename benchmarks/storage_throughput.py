"""Read and write throughput of the storages through cacheme, next to the raw driver.

    .venv/bin/python benchmarks/storage_throughput.py [--keys 3000] [--concurrency 32]
        [--backends sqlite,postgresql,mysql,redis]

For each backend, on a fresh table (SQL, dropped afterwards) or a fresh key space (Redis, deleted after):
  get read      cacheme.get of keys already cached          vs raw: SELECT one row
  get_all read  cacheme.get_all of 100 cached keys          vs raw: SELECT ... IN/ANY of 100 rows
  get write     cacheme.get of uncached keys (load + write) vs raw: SELECT one row (miss) + upsert
  get_all write cacheme.get_all of 100 uncached keys        vs raw: batch SELECT (miss) + batch upsert
The raw side runs the very SQL strings the storage runs (Redis: GET, MGET, SET PX and a pipeline of them),
on a pool of the same size, with the same key hashing and pickling, so the difference is what the engine
adds (and, for Redis, what its batching of concurrent requests saves). Figures are keys per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import pickle
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, cast

import aiomysql
import aiosqlite
import asyncpg
import redis.asyncio as aioredis

import cacheme
from cacheme.serializer import PickleSerializer
from cacheme_sql.base import SqlStorage

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
BATCH = 100
POOL_SIZE = 10
TTL = timedelta(hours=1)


def khash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Raw:
    """The storage's own SQL, run straight through the driver."""

    def __init__(self, kind: str, storage: Any) -> None:
        self.kind, self.s = kind, storage
        self.pool: Any = None
        self.idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()

    async def open(self) -> None:
        if self.kind == "postgresql":
            self.pool = await asyncpg.create_pool(POSTGRES_URL, min_size=POOL_SIZE, max_size=POOL_SIZE)
        elif self.kind == "mysql":
            self.pool = await aiomysql.create_pool(
                minsize=POOL_SIZE, maxsize=POOL_SIZE, host="127.0.0.1", port=3306, user="root", db="test",
                autocommit=True, charset="utf8mb4",
            )  # fmt: skip
        else:
            for _ in range(self.s.pool_size):
                self.idle.put_nowait(await aiosqlite.connect(self.s.path, isolation_level=None))

    async def close(self) -> None:
        if self.kind == "postgresql":
            await self.pool.close()
        elif self.kind == "mysql":
            self.pool.close()
            await self.pool.wait_closed()
        else:
            while not self.idle.empty():
                await self.idle.get_nowait().close()

    @contextlib.asynccontextmanager
    async def sqlite(self) -> AsyncIterator[aiosqlite.Connection]:
        connection = await self.idle.get()
        try:
            yield connection
        finally:
            self.idle.put_nowait(connection)

    async def get(self, key: str) -> Any:
        s = self.s
        if self.kind == "postgresql":
            async with self.pool.acquire() as c:
                row = await c.fetchrow(s._sql_get, khash(key))
        elif self.kind == "mysql":
            async with self.pool.acquire() as c, c.cursor() as cur:
                await cur.execute(s._sql_get, (khash(key),))
                row = await cur.fetchone()
        else:
            async with self.sqlite() as c, c.execute(s._sql_get, (khash(key),)) as cur:
                row = await cur.fetchone()
        return None if row is None or row[0] != key else pickle.loads(row[1])

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        s, hashes = self.s, [khash(key) for key in keys]
        if self.kind == "postgresql":
            async with self.pool.acquire() as c:
                rows = await c.fetch(s._sql_get_many, hashes)
        elif self.kind == "mysql":
            async with self.pool.acquire() as c, c.cursor() as cur:
                await cur.execute(s._sql_get_many.format(marks=", ".join(["%s"] * len(hashes))), hashes)
                rows = await cur.fetchall()
        else:
            async with self.sqlite() as c:
                query = s._sql_get_many.format(marks=", ".join("?" * len(hashes)))
                async with c.execute(query, hashes) as cur:
                    rows = await cur.fetchall()
        return {row[0]: pickle.loads(row[1]) for row in rows}

    async def set(self, key: str, value: Any) -> None:
        s, data = self.s, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        if self.kind == "postgresql":
            async with self.pool.acquire() as c:
                await c.execute(s._sql_set, khash(key), key, data, TTL)
        elif self.kind == "mysql":
            await self.set_many({key: value})  # the storage's set is its one-row set_many
        else:
            async with self.sqlite() as c:
                await c.execute(s._sql_set, (khash(key), key, data, TTL.total_seconds()))

    async def set_many(self, items: dict[str, Any]) -> None:
        s = self.s
        keys = list(items)
        values = [pickle.dumps(items[key], pickle.HIGHEST_PROTOCOL) for key in keys]
        if self.kind == "postgresql":
            async with self.pool.acquire() as c:
                await c.execute(s._sql_set_many, [khash(k) for k in keys], keys, values, TTL)
        elif self.kind == "mysql":
            params: list[Any] = []
            micros = TTL // timedelta(microseconds=1)
            for key, value in zip(keys, values, strict=True):
                params.extend((khash(key), key, value, micros))
            query = s._sql_insert + ", ".join([s._sql_row] * len(keys)) + s._sql_upsert
            async with self.pool.acquire() as c, c.cursor() as cur:
                await cur.execute(query, params)
        else:
            rows = [(khash(k), k, v, TTL.total_seconds()) for k, v in zip(keys, values, strict=True)]
            async with self.sqlite() as c:
                await c.execute("BEGIN IMMEDIATE")
                await c.executemany(s._sql_set, rows)
                await c.execute("COMMIT")


class RawRedis:
    """The commands the Redis storage sends, straight through redis-py, one per call."""

    def __init__(self, url: str) -> None:
        self.client = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE)
        )
        self.ttl_ms = TTL // timedelta(milliseconds=1)

    async def open(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, key: str) -> Any:
        data = cast("bytes | None", await self.client.get(key))
        return None if data is None else pickle.loads(data)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        values = cast("list[bytes | None]", await self.client.mget(keys))
        return {
            key: pickle.loads(value) for key, value in zip(keys, values, strict=True) if value is not None
        }

    async def set(self, key: str, value: Any) -> None:
        await self.client.set(key, pickle.dumps(value, pickle.HIGHEST_PROTOCOL), px=self.ttl_ms)

    async def set_many(self, items: dict[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.execute_command("SET", key, pickle.dumps(value, pickle.HIGHEST_PROTOCOL), "PX", self.ttl_ms)
        await pipe.execute()


def load_value(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user {i}", "payload": "x" * 100}


async def timed(keys: int, concurrency: int, work: Callable[[int], Awaitable[Any]]) -> float:
    """Keys per second for ``work(i)`` over range(keys), ``concurrency`` workers."""
    counter = iter(range(keys))

    async def worker() -> None:
        for i in counter:
            await work(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return keys / (time.perf_counter() - start)


async def bench_backend(kind: str, url: str, keys: int, concurrency: int) -> list[tuple[str, float, float]]:
    table = f"bench_{uuid.uuid4().hex[:12]}"
    name = f"bench-{kind}"
    raw: Raw | RawRedis
    if kind == "redis":
        storage = cacheme.Storage(url, pool_size=POOL_SIZE)
        raw = RawRedis(url)
    else:
        storage = cacheme.Storage(url, table=table, pool_size=POOL_SIZE, sweep_interval=None)
        assert isinstance(storage, SqlStorage)
        raw = Raw(kind, storage)
    await cacheme.register_storage(name, storage)

    class BenchNode(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"bench:{self.id}"

        async def load(self) -> dict[str, Any]:
            return load_value(self.id)

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node]) -> list[dict[str, Any]]:
            return [load_value(getattr(node, "id")) for node in nodes]  # noqa: B009

        class Meta(cacheme.Node.Meta):
            version = table  # a key space of its own
            caches = [cacheme.Cache(storage=name, ttl=TTL)]
            serializer = PickleSerializer()

    await raw.open()
    rows: list[tuple[str, float, float]] = []
    batches = keys // BATCH
    batch_concurrency = max(1, concurrency // 8)
    try:
        # Writes first (keys are cold), then reads of what was written. Each side gets its own key range.
        def full(i: int) -> str:
            return BenchNode(id=i).full_key()

        async def core_get(i: int) -> None:
            await cacheme.get(BenchNode(id=i))

        async def raw_write_one(i: int) -> None:
            key = full(i + 10 * keys)
            if await raw.get(key) is None:
                await raw.set(key, load_value(i))

        async def core_get_all(b: int, offset: int = 0) -> None:
            await cacheme.get_all([BenchNode(id=offset + b * BATCH + j) for j in range(BATCH)])

        async def raw_write_batch(b: int) -> None:
            batch = [full(11 * keys + b * BATCH + j) for j in range(BATCH)]
            found = await raw.get_many(batch)
            await raw.set_many({key: load_value(j) for j, key in enumerate(batch) if key not in found})

        async def raw_read_one(i: int) -> None:
            assert await raw.get(full(i + 10 * keys)) is not None

        async def raw_read_batch(b: int) -> None:
            batch = [full(11 * keys + b * BATCH + j) for j in range(BATCH)]
            assert len(await raw.get_many(batch)) == BATCH

        write_one = (await timed(keys, concurrency, core_get), await timed(keys, concurrency, raw_write_one))
        await asyncio.sleep(0.2)  # let the engine's write-backs finish
        write_batch = (
            await timed(batches, batch_concurrency, lambda b: core_get_all(b, offset=keys)) * BATCH,
            await timed(batches, batch_concurrency, raw_write_batch) * BATCH,
        )
        await asyncio.sleep(0.2)
        read_one = (await timed(keys, concurrency, core_get), await timed(keys, concurrency, raw_read_one))
        read_batch = (
            await timed(batches, batch_concurrency, lambda b: core_get_all(b, offset=keys)) * BATCH,
            await timed(batches, batch_concurrency, raw_read_batch) * BATCH,
        )
        metrics = cacheme.stats(BenchNode)
        assert metrics.storage_error_count() == 0, metrics
        assert metrics.load_count() == 2 * keys, metrics
        rows = [
            ("get read", *read_one),
            (f"get_all({BATCH}) read", *read_batch),
            ("get write (miss+load+write)", *write_one),
            (f"get_all({BATCH}) write", *write_batch),
        ]
    finally:
        await raw.close()
        await cacheme.unregister_storage(name)
        await drop(kind, url, table)
    return rows


async def drop(kind: str, url: str, table: str) -> None:
    if kind == "redis":
        client = aioredis.Redis.from_url(url)
        keys = [key async for key in client.scan_iter(match=f"cacheme:bench:*:{table}", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
        await client.aclose()
    elif kind == "postgresql":
        connection = await asyncpg.connect(url)
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
        await connection.close()
    elif kind == "mysql":
        mysql = await aiomysql.connect(host="127.0.0.1", port=3306, user="root", db="test", autocommit=True)
        async with mysql.cursor() as cursor:
            await cursor.execute(f"DROP TABLE IF EXISTS {table}")
        mysql.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgresql,mysql,redis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {
            "sqlite": f"sqlite:///{tmp}/bench.db",
            "postgresql": POSTGRES_URL,
            "mysql": MYSQL_URL,
            "redis": REDIS_URL,
        }
        print(f"keys={args.keys} concurrency={args.concurrency} pool_size={POOL_SIZE}; keys/s")
        print(f"{'backend':<11} {'operation':<28} {'cacheme':>10} {'raw driver':>11} {'ratio':>6}")
        for kind in args.backends.split(","):
            for operation, core, raw in await bench_backend(kind, urls[kind], args.keys, args.concurrency):
                print(f"{kind:<11} {operation:<28} {core:>10,.0f} {raw:>11,.0f} {core / raw:>6.2f}")


if __name__ == "__main__":
    asyncio.run(main())
