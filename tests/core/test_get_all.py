"""get_all: order and duplicates kept, one load_all for what is missing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

import cacheme
from cacheme import singleflight


def make_batch_node(storage: str, fail: bool = False) -> Any:
    class Item(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"item:{self.id}"

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node]) -> list[int]:
            Item.batches.append(sorted(n.id for n in nodes))  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
            if fail:
                raise LookupError("batch source failed")
            return [n.id * 10 for n in nodes]  # type: ignore[attr-defined]

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    Item.batches = []  # type: ignore[attr-defined]
    return Item


async def test_order_and_duplicates_are_kept_and_load_all_is_called_once(local: str) -> None:
    item = make_batch_node(local)
    ids = [5, 3, 5, 1, 3, 9]
    assert await cacheme.get_all([item(id=i) for i in ids]) == [50, 30, 50, 10, 30, 90]
    assert item.batches == [[1, 3, 5, 9]]
    # A second call: 3 and 5 cached, 2 is new, loaded alone.
    assert await cacheme.get_all([item(id=2), item(id=3), item(id=5), item(id=2)]) == [20, 30, 50, 20]
    assert item.batches == [[1, 3, 5, 9], [2]]
    metrics = cacheme.stats(item)
    assert metrics.request_count() == 10
    assert metrics.hit_count() == 2  # 3 and 5 in the second call
    assert metrics.load_count() == 5


async def test_empty_get_all(local: str) -> None:
    assert await cacheme.get_all([]) == []


async def test_mixed_node_classes_are_refused(local: str) -> None:
    first, second = make_batch_node(local), make_batch_node(local)
    with pytest.raises(TypeError, match="one class"):
        await cacheme.get_all([first(id=1), second(id=1)])
    assert cacheme.stats(first).request_count() == 0  # a refused call is no request


async def test_failed_load_all_reaches_every_waiter_and_poisons_nothing(local: str) -> None:
    failing = make_batch_node(local, fail=True)
    calls = [cacheme.get_all([failing(id=1), failing(id=2)]) for _ in range(200)]
    calls += [cacheme.get(failing(id=2)) for _ in range(200)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, LookupError) for o in outcomes)
    assert failing.batches == [[1, 2]]
    assert singleflight.in_flight_count() == 0
    assert cacheme.stats(failing).load_failure_count() == 2


async def test_concurrent_overlapping_batches_load_each_key_once(local: str) -> None:
    item = make_batch_node(local)
    batches = [[(start + j) % 300 for j in range(20)] for start in range(0, 3000, 7)]
    results = await asyncio.gather(*(cacheme.get_all([item(id=i) for i in batch]) for batch in batches))
    assert results == [[i * 10 for i in batch] for batch in batches]
    loaded = [i for batch in item.batches for i in batch]
    assert sorted(loaded) == sorted(set(loaded))  # no key loaded twice
    assert set(loaded) == {i for batch in batches for i in batch}
    assert singleflight.in_flight_count() == 0


async def test_default_load_all_gathers_load(local: str) -> None:
    class Single(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"single:{self.id}"

        async def load(self) -> str:
            return f"s{self.id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=local, ttl=None)]

    assert await cacheme.get_all([Single(id=2), Single(id=1), Single(id=2)]) == ["s2", "s1", "s2"]


async def test_load_all_returning_the_wrong_number_of_values_is_an_error(local: str) -> None:
    class Broken(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"broken:{self.id}"

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node]) -> list[int]:
            return [1]

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=local, ttl=None)]

    with pytest.raises(ValueError, match="returned 1 values for 2 nodes"):
        await cacheme.get_all([Broken(id=1), Broken(id=2)])
