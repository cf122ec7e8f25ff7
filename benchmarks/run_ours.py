"""Runner for this repository's cacheme (core, local, redis), run with the interpreter that has them.

Variants:
- ``local``: caches = [local tlfu] (trace and batch; sized so that nothing is evicted), and the micro
  benchmark (which ignores the variant);
- ``redis``: caches = [Redis], ``await cacheme.get(BenchNode(n))``;
- ``chain``: caches = [local tlfu, Redis];
- ``memoize``: caches = [Redis] through ``cacheme.Memoize`` (the function is the source, like the peers'
  decorators);
- ``memoize-chain``: the same with [local tlfu, Redis];
- ``local-freeze``, ``redis-freeze``, ``chain-freeze``: ``local``, ``redis``, ``chain`` with ``gc.collect()``
  and ``gc.freeze()`` called after the set-up, before the drain. That is an application-side recipe (the
  objects alive at start-up are moved out of the collector's sight, so the collections the run triggers do
  not traverse them again); the library itself never touches ``gc``.

The trace and batch results carry ``local_entries``, the entries in the local tier at the end, for the
variants that have one: fewer than the unique keys would mean the tier evicted.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import version
from typing import Any

import harness
from theine import Cache as TheineCache

import cacheme
from cacheme.serializer import PickleSerializer

# Above the unique keys of the trace (55,268) and of the batch (55,653): the local tier never evicts.
LOCAL_SIZE = 100_000
FREEZE = "-freeze"
# The peers wait for a pooled connection without limit; ours waits up to this many seconds (default 3).
POOL_TIMEOUT = 60.0
REDIS_ONLY = [cacheme.Cache(storage="redis", ttl=None)]
LOCAL_ONLY = [cacheme.Cache(storage="local", ttl=None)]
LOCAL_THEN_REDIS = [cacheme.Cache(storage="local", ttl=None), cacheme.Cache(storage="redis", ttl=None)]


class BenchNode(cacheme.Node):
    n: int

    def key(self) -> str:
        return f"bench:{self.n}"

    async def load(self) -> int:
        return await harness.load_one(self.n)

    @classmethod
    async def load_all(cls, nodes: Sequence[cacheme.Node]) -> Sequence[Any]:
        return await harness.load_many([node.n for node in nodes if isinstance(node, BenchNode)])

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = REDIS_ONLY
        serializer = PickleSerializer()


class MemoNode(cacheme.Node):
    n: int

    def key(self) -> str:
        return f"memo:{self.n}"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = REDIS_ONLY
        serializer = PickleSerializer()


@cacheme.Memoize(MemoNode)
async def memoized_load(n: int) -> int:
    return await harness.load_one(n)


@memoized_load.to_node
def _(n: int) -> MemoNode:
    return MemoNode(n)


class LocalNode(cacheme.Node):
    n: int

    def key(self) -> str:
        return f"local:{self.n}"

    async def load(self) -> int:
        return self.n

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="local", ttl=None)]


class DictStorage(cacheme.LocalStorage):
    """A plain dict as the local tier: the micro benchmark's measure of the engine alone."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._data: dict[str, Any] = {}

    async def close(self) -> None:
        self._data.clear()

    def get_sync(self, key: str) -> Any:
        return self._data.get(key, cacheme.MISSING)

    def set_sync(self, key: str, value: Any, ttl: Any) -> None:
        self._data[key] = value

    def delete_sync(self, key: str) -> None:
        self._data.pop(key, None)


class DictNode(cacheme.Node):
    n: int

    def key(self) -> str:
        return f"dict:{self.n}"

    async def load(self) -> int:
        return self.n

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="dict", ttl=None)]


async def setup(args: Any, variant: str) -> cacheme.BaseStorage:
    """Register the storages, set the nodes' caches for ``variant``; return the local storage."""
    local = cacheme.Storage("local://tlfu", size=LOCAL_SIZE)
    await cacheme.register_storage("local", local)
    await cacheme.register_storage("dict", DictStorage("dict://"))
    if args.workload != "micro":
        storage = cacheme.Storage(
            harness.redis_url(args.port), pool_size=harness.POOL_SIZE, pool_timeout=POOL_TIMEOUT
        )
        await cacheme.register_storage("redis", storage)
    if variant.endswith("chain"):
        BenchNode.Meta.caches = LOCAL_THEN_REDIS
        MemoNode.Meta.caches = LOCAL_THEN_REDIS
    elif variant == "local":
        BenchNode.Meta.caches = LOCAL_ONLY
    return local


async def micro(args: Any) -> dict[str, Any]:
    number, repeat = args.number, args.repeat
    raw: TheineCache[str, int] = TheineCache(1000)
    raw_key = LocalNode(1).full_key()
    raw.set(raw_key, 1)
    result: dict[str, Any] = await harness.local_hit_micro(
        cacheme.get, cacheme.get_all, LocalNode, raw.get, (raw_key,), number, repeat
    )
    # The same through a plain-dict tier: the engine's own cost.
    dict_tier = await harness.local_hit_micro(
        cacheme.get, cacheme.get_all, DictNode, len, ((),), number, repeat
    )
    result["get_hit_dict_tier_ns"] = dict_tier["get_hit_ns"]
    result["get_all_20_dict_tier_ns"] = dict_tier["get_all_20_ns"]
    return result


async def get_one(key: int) -> Any:
    return await cacheme.get(BenchNode(key))


async def get_many(keys: list[int]) -> list[Any]:
    return await cacheme.get_all([BenchNode(key) for key in keys])


async def main() -> None:
    base_variants = ["redis", "chain", "memoize", "memoize-chain", "local"]
    args = harness.parse_args(base_variants + [v + FREEZE for v in ("local", "redis", "chain")])
    variant = args.variant.removesuffix(FREEZE)
    local = await setup(args, variant)
    result: dict[str, Any] = {"lib": "cacheme", "version": version("cacheme-core")}
    if args.workload == "micro":
        result.update(await micro(args))
    else:
        jobs = harness.load_jobs(args.keys)
        result["unique"] = harness.unique_keys(jobs)
        call: Callable[[Any], Awaitable[Any]]
        node_class: type[cacheme.Node]
        if args.workload == "batch":
            call, node_class = get_many, BenchNode
        elif variant.startswith("memoize"):
            call, node_class = memoized_load, MemoNode
        else:
            call, node_class = get_one, BenchNode
        if args.variant.endswith(FREEZE):
            gc.collect()
            gc.freeze()
        result.update(await harness.drain(jobs, call, args.workers))
        result["storage_errors"] = cacheme.stats(node_class).storage_error_count()
        if variant in ("local", "chain", "memoize-chain") and isinstance(local, cacheme.LocalStorage):
            result["local_entries"] = local.entry_count()
        await cacheme.unregister_storage("redis")
    harness.emit(result)


if __name__ == "__main__":
    asyncio.run(main())
