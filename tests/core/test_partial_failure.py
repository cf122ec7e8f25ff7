"""One key's failure is its own (issue 10, point 5).

With the default ``load_all``, each node of a ``get_all`` is loaded on its
own: a node whose load raises fails only its own waiters; the others are
answered, cached and counted as successes. A node class's own ``load_all``
that raises fails its whole batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar

import pytest

import cacheme
from cacheme import singleflight


def storage(name: str) -> cacheme.LocalStorage:
    found = cacheme.registered_storages()[name]
    assert isinstance(found, cacheme.LocalStorage)
    return found


def part_node(storage_name: str) -> Any:
    """Nodes loaded one by one (the default load_all); the ids in ``failing`` raise."""

    class Part(cacheme.Node):
        id: int
        failing: ClassVar[set[int]] = set()
        loads: ClassVar[list[int]] = []
        running: ClassVar[int] = 0
        most_running: ClassVar[int] = 0

        def key(self) -> str:
            return f"part:{self.id}"

        async def load(self) -> str:
            Part.loads.append(self.id)
            Part.running += 1
            Part.most_running = max(Part.most_running, Part.running)
            try:
                await asyncio.sleep(0.05)
            finally:
                Part.running -= 1
            if self.id in Part.failing:
                raise LookupError(f"no source for {self.id}")
            return f"value-{self.id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage_name, ttl=None)]

    Part.failing = set()
    Part.loads = []
    return Part


async def test_a_get_of_a_gets_its_value_when_only_b_fails_in_the_same_get_all(local: str) -> None:
    part = part_node(local)
    part.failing = {2}
    batch = asyncio.create_task(cacheme.get_all([part(id=1), part(id=2)]))
    await asyncio.sleep(0)  # get_all has put both keys in flight
    assert singleflight.in_flight_count() == 2
    single_a = asyncio.create_task(cacheme.get(part(id=1)))  # joins get_all's fetch of A
    single_b = asyncio.create_task(cacheme.get(part(id=2)))  # joins get_all's fetch of B
    with pytest.raises(LookupError, match="no source for 2"):
        await batch
    assert await single_a == "value-1"
    with pytest.raises(LookupError, match="no source for 2"):
        await single_b
    assert sorted(part.loads) == [1, 2]
    assert singleflight.in_flight_count() == 0
    metrics = cacheme.stats(part)
    assert (metrics.load_success_count(), metrics.load_failure_count()) == (1, 1)
    assert metrics.request_count() == 4
    assert metrics.hit_count() == 0
    assert metrics.total_load_time() > 0

    # A was cached: no second load.
    assert storage(local).get_sync(part(id=1).full_key()).value == "value-1"
    assert await cacheme.get(part(id=1)) == "value-1"
    assert await cacheme.get_all([part(id=1)]) == ["value-1"]
    assert sorted(part.loads) == [1, 2]
    # B was not: the next request loads it again.
    assert storage(local).get_sync(part(id=2).full_key()) is cacheme.MISSING
    part.failing = set()
    assert await cacheme.get_all([part(id=2), part(id=1)]) == ["value-2", "value-1"]
    assert sorted(part.loads) == [1, 2, 2]
    assert (metrics.load_success_count(), metrics.load_failure_count()) == (2, 1)


async def test_every_waiter_of_b_gets_b_error_and_every_waiter_of_a_gets_a(local: str) -> None:
    part = part_node(local)
    part.failing = {2}
    calls: list[Coroutine[Any, Any, Any]] = [
        cacheme.get_all([part(id=1), part(id=2), part(id=1)]) for _ in range(50)
    ]
    calls += [cacheme.get_all([part(id=2), part(id=3)]) for _ in range(50)]
    calls += [cacheme.get(part(id=2)) for _ in range(50)]
    calls += [cacheme.get_all([part(id=3), part(id=1)]) for _ in range(50)]
    calls += [cacheme.get(part(id=1)) for _ in range(50)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, LookupError) and "no source for 2" in str(o) for o in outcomes[:150])
    assert outcomes[150:200] == [["value-3", "value-1"]] * 50
    assert outcomes[200:] == ["value-1"] * 50
    assert sorted(part.loads) == [1, 2, 3]  # each key loaded once
    metrics = cacheme.stats(part)
    assert (metrics.load_success_count(), metrics.load_failure_count()) == (2, 1)
    assert singleflight.in_flight_count() == 0


async def test_the_nodes_of_a_get_all_load_concurrently(local: str) -> None:
    part = part_node(local)
    assert await cacheme.get_all([part(id=i) for i in range(20)]) == [f"value-{i}" for i in range(20)]
    assert part.most_running == 20
    assert cacheme.stats(part).load_success_count() == 20


async def test_a_load_all_of_the_node_class_that_raises_fails_its_whole_batch(local: str) -> None:
    class Batch(cacheme.Node):
        id: int
        batches: ClassVar[list[list[int]]] = []

        def key(self) -> str:
            return f"batch:{self.id}"

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node]) -> list[str]:
            ids = sorted(node.id for node in nodes)  # type: ignore[attr-defined]
            Batch.batches.append(ids)
            await asyncio.sleep(0.05)
            if 2 in ids:
                raise LookupError("the batch query failed")
            return [f"value-{node.id}" for node in nodes]  # type: ignore[attr-defined]

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=local, ttl=None)]

    class Inherited(Batch):  # inherits Batch's load_all: batched too
        def key(self) -> str:
            return f"inherited:{self.id}"

    for node_class in (Batch, Inherited):
        Batch.batches = []
        batch = asyncio.create_task(cacheme.get_all([node_class(id=1), node_class(id=2)]))
        await asyncio.sleep(0)
        single_a = asyncio.create_task(cacheme.get(node_class(id=1)))
        with pytest.raises(LookupError, match="the batch query failed"):
            await batch
        with pytest.raises(LookupError, match="the batch query failed"):
            await single_a  # A fails with the batch it was loaded in
        assert Batch.batches == [[1, 2]]
        metrics = cacheme.stats(node_class)
        assert (metrics.load_success_count(), metrics.load_failure_count()) == (0, 2)
        assert storage(local).get_sync(node_class(id=1).full_key()) is cacheme.MISSING
        assert await cacheme.get_all([node_class(id=1), node_class(id=3)]) == ["value-1", "value-3"]
        assert Batch.batches == [[1, 2], [1, 3]]
