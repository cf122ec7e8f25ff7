"""Memoize under concurrency, and the doorkeeper in front of the caches."""

from __future__ import annotations

import asyncio

import pytest

import cacheme
from cacheme import singleflight


async def test_memoize_loads_each_key_once_under_concurrency(local: str) -> None:
    class UserNode(cacheme.Node):
        user_id: int

        def key(self) -> str:
            return f"user:{self.user_id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=local, ttl=None)]

    calls: list[int] = []

    @cacheme.Memoize(UserNode)
    async def fetch_user(user_id: int, verbose: bool = False) -> dict[str, int]:
        calls.append(user_id)
        await asyncio.sleep(0.05)
        return {"id": user_id}

    @fetch_user.to_node
    def _(user_id: int, verbose: bool = False) -> UserNode:
        return UserNode(user_id=user_id)

    ids = [i % 50 for i in range(3000)]
    results = await asyncio.gather(*(fetch_user(i, verbose=True) for i in ids))
    assert results == [{"id": i} for i in ids]
    assert sorted(calls) == list(range(50))
    assert await fetch_user(3) == {"id": 3}
    assert len(calls) == 50
    assert fetch_user.__name__ == "fetch_user"
    assert cacheme.stats(UserNode).load_count() == 50
    assert singleflight.in_flight_count() == 0


async def test_memoize_with_build_node_and_dynamic_node(local: str) -> None:
    built = cacheme.build_node("MemoDynamic", "v1", [cacheme.Cache(storage=local, ttl=None)])
    calls = 0

    @cacheme.Memoize(built)
    async def double(a: int) -> int:
        nonlocal calls
        calls += 1
        return a * 2

    @double.to_node
    def _(a: int) -> cacheme.DynamicNode:
        return cacheme.DynamicNode(key=f"double:{a}")

    assert [await double(2), await double(2), await double(3)] == [4, 4, 6]
    assert calls == 2
    assert cacheme.stats(built).hit_count() == 1


async def test_memoize_without_mapper_or_with_a_wrong_node_is_an_error(local: str) -> None:
    built = cacheme.build_node("MemoNoMapper", "v1", [cacheme.Cache(storage=local, ttl=None)])

    @cacheme.Memoize(built)
    async def f(a: int) -> int:
        return a

    with pytest.raises(cacheme.NodeDefinitionError, match="to_node"):
        await f(1)

    class Other(cacheme.Node):
        def key(self) -> str:
            return "other"

    @f.to_node
    def _(a: int) -> cacheme.Node:
        return Other()

    with pytest.raises(TypeError, match="expected MemoNoMapper"):
        await f(1)
    with pytest.raises(cacheme.NodeDefinitionError):
        cacheme.Memoize(int)  # type: ignore[arg-type]


async def test_doorkeeper_caches_a_key_only_from_its_second_load(local: str) -> None:
    class Guarded(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"guarded:{self.id}"

        async def load(self) -> int:
            Guarded.loads += 1  # type: ignore[attr-defined]
            return self.id

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=local, ttl=None)]
            doorkeeper = cacheme.BloomFilter(1000, 0.01)

    Guarded.loads = 0  # type: ignore[attr-defined]
    assert await cacheme.get(Guarded(id=1)) == 1  # seen first: not cached
    assert await cacheme.get(Guarded(id=1)) == 1  # seen before: loaded and cached
    assert await cacheme.get(Guarded(id=1)) == 1  # hit
    assert Guarded.loads == 2  # type: ignore[attr-defined]
    assert await cacheme.get_all([Guarded(id=2), Guarded(id=3)]) == [2, 3]
    assert await cacheme.get_all([Guarded(id=2), Guarded(id=3)]) == [2, 3]
    assert await cacheme.get_all([Guarded(id=2), Guarded(id=3)]) == [2, 3]
    assert Guarded.loads == 6  # type: ignore[attr-defined]
    assert cacheme.stats(Guarded).hit_count() == 3


def test_bloom_filter_membership_false_positives_and_reset() -> None:
    bloom = cacheme.BloomFilter(10_000, 0.01)
    for i in range(10_000):
        bloom.put(f"in:{i}")
    assert all(bloom.contains(f"in:{i}") for i in range(10_000))
    false_positives = sum(bloom.contains(f"out:{i}") for i in range(10_000))
    assert false_positives < 300  # 1% expected; 3% leaves room for chance
    bloom.put("one-more")  # the 10,001st insertion clears the filter first
    assert bloom.contains("one-more")
    assert not bloom.contains("in:1")
    with pytest.raises(ValueError):
        cacheme.BloomFilter(0, 0.01)
    with pytest.raises(ValueError):
        cacheme.BloomFilter(10, 1.5)
