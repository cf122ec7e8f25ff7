"""Runner for aiocache (current release), run with benchmarks/.venv-peers/bin/python.

Variants: ``cached`` (its ``cached`` decorator on Redis) and ``stampede`` (``cached_stampede``).
Redis sits behind a 100-connection blocking pool, as for every library; operation timeouts are off
so that waiting for a pooled connection under high concurrency is not turned into a miss.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

import harness
from aiocache import Cache, cached, cached_stampede
from aiocache.serializers import PickleSerializer
from redis.asyncio import BlockingConnectionPool


def decorate(variant: str, port: int) -> Any:
    options: dict[str, Any] = {
        "cache": Cache.REDIS,
        "endpoint": "127.0.0.1",
        "port": port,
        "serializer": PickleSerializer(),
        "key_builder": lambda func, n: f"bench:{n}",
        "timeout": None,
        "pool_max_size": harness.POOL_SIZE,
        "connection_pool_class": BlockingConnectionPool,
        "connection_pool_kwargs": {"timeout": None},
    }
    if variant == "stampede":
        return cached_stampede(lease=30, **options)
    return cached(**options)


async def main() -> None:
    args = harness.parse_args(["cached", "stampede"])
    if args.workload != "trace":
        raise SystemExit("aiocache runs the trace only")

    @decorate(args.variant, args.port)
    async def fetch(n: int) -> int:
        return await harness.load_one(n)

    jobs = harness.load_jobs(args.keys)
    result: dict[str, Any] = {
        "lib": "aiocache",
        "version": version("aiocache"),
        "unique": harness.unique_keys(jobs),
    }
    result.update(await harness.drain(jobs, fetch, args.workers))
    harness.emit(result)


if __name__ == "__main__":
    asyncio.run(main())
