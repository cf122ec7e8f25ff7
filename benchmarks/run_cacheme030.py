"""Runner for the original cacheme 0.3.0 (PyPI), run with benchmarks/.venv-cacheme030/bin/python.

Variants: ``redis`` (caches = [Redis]) and ``chain`` (caches = [local tlfu, Redis]).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import harness
from theine import Cache as TheineCache

import cacheme
from cacheme.serializer import PickleSerializer

LOCAL_SIZE = 100_000


class BenchNode(cacheme.Node):
    def __init__(self, n: int) -> None:
        self.n = n

    def key(self) -> str:
        return f"bench:{self.n}"

    async def load(self) -> int:
        return await harness.load_one(self.n)

    @classmethod
    async def load_all(cls, nodes: Sequence[Any]) -> Sequence[tuple[Any, Any]]:
        values = await harness.load_many([node.n for node in nodes])
        return list(zip(nodes, values, strict=True))

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="redis", ttl=None)]
        serializer = PickleSerializer()


class LocalNode(cacheme.Node):
    def __init__(self, n: int) -> None:
        self.n = n

    def key(self) -> str:
        return f"local:{self.n}"

    async def load(self) -> int:
        return self.n

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="local", ttl=None)]
        serializer = PickleSerializer()


async def setup(args: Any) -> None:
    await cacheme.register_storage("local", cacheme.Storage("local://tlfu", size=LOCAL_SIZE))
    if args.workload != "micro":
        await cacheme.register_storage(
            "redis", cacheme.Storage(harness.redis_url(args.port), pool_size=harness.POOL_SIZE)
        )
    if args.variant == "chain":
        BenchNode.Meta.caches = [
            cacheme.Cache(storage="local", ttl=None),
            cacheme.Cache(storage="redis", ttl=None),
        ]


async def micro(args: Any) -> dict[str, Any]:
    raw = TheineCache("tlfu", 1000)
    raw_key = LocalNode(1).full_key()
    raw.set(raw_key, 1)
    return await harness.local_hit_micro(
        cacheme.get, cacheme.get_all, LocalNode, raw.get, (raw_key, None), args.number, args.repeat
    )


async def main() -> None:
    args = harness.parse_args(["redis", "chain", "local"])
    await setup(args)
    result: dict[str, Any] = {"lib": "cacheme-0.3.0", "version": version("cacheme")}
    if args.workload == "micro":
        result.update(await micro(args))
    else:
        jobs = harness.load_jobs(args.keys)
        result["unique"] = harness.unique_keys(jobs)
        if args.workload == "trace":

            async def call(key: int) -> Any:
                return await cacheme.get(BenchNode(key))

        else:

            async def call(keys: list[int]) -> Any:
                return await cacheme.get_all([BenchNode(key) for key in keys])

        result.update(await harness.drain(jobs, call, args.workers))
    harness.emit(result)


if __name__ == "__main__":
    asyncio.run(main())
