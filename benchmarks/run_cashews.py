"""Runner for cashews (current release), run with benchmarks/.venv-peers/bin/python.

Variants: ``cache`` (its ``cache`` decorator on Redis) and ``lock`` (the same with ``lock=True``, which
needs a ttl: one hour, longer than any run). Redis sits behind a 100-connection blocking pool; the wait
for a pooled connection and the socket timeout are raised so that high concurrency is not turned into
suppressed errors (misses).
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

import harness
from cashews import Cache


async def main() -> None:
    args = harness.parse_args(["cache", "lock"])
    if args.workload != "trace":
        raise SystemExit("cashews runs the trace only")
    cache = Cache()
    cache.setup(
        harness.redis_url(args.port),
        max_connections=harness.POOL_SIZE,
        wait_for_connection_timeout=600,
        socket_timeout=60,
    )
    if args.variant == "lock":
        decorator = cache(ttl=3600, key="bench:{n}", lock=True)
    else:
        decorator = cache(ttl=None, key="bench:{n}")

    @decorator
    async def fetch(n: int) -> int:
        return await harness.load_one(n)

    await cache.init()
    jobs = harness.load_jobs(args.keys)
    result: dict[str, Any] = {
        "lib": "cashews",
        "version": version("cashews"),
        "unique": harness.unique_keys(jobs),
    }
    result.update(await harness.drain(jobs, fetch, args.workers))
    await cache.close()
    harness.emit(result)


if __name__ == "__main__":
    asyncio.run(main())
