"""Every counter exact after a known sequence of requests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import cacheme


def make_node(storage: str, version: str = "v1") -> Any:
    class Measured(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"measured:{self.id}"

        async def load(self) -> int:
            await asyncio.sleep(0.01)
            if self.id < 0:
                raise ValueError("negative")
            return self.id

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    Measured.Meta.version = version
    return Measured


async def test_rates_are_zero_when_nothing_happened(local: str) -> None:
    metrics = cacheme.stats(make_node(local))
    assert metrics.request_count() == metrics.hit_count() == metrics.miss_count() == 0
    assert metrics.load_count() == metrics.total_load_time() == metrics.storage_error_count() == 0
    assert metrics.hit_rate() == metrics.miss_rate() == metrics.load_failure_rate() == 0.0
    assert metrics.average_load_time() == 0.0


async def test_counters_after_a_known_sequence(local: str) -> None:
    node_class = make_node(local)
    await cacheme.get(node_class(id=1))  # miss, load
    await cacheme.get(node_class(id=1))  # hit
    await cacheme.get_all([node_class(id=1), node_class(id=2), node_class(id=2)])  # hit, miss, miss: 1 load
    with pytest.raises(ValueError):
        await cacheme.get(node_class(id=-1))  # miss, failed load
    await cacheme.get_all([node_class(id=2), node_class(id=3)])  # hit, miss
    metrics = cacheme.stats(node_class)
    assert metrics.request_count() == 8
    assert metrics.hit_count() == 3
    assert metrics.miss_count() == 5
    assert metrics.hit_rate() == 3 / 8
    assert metrics.miss_rate() == 5 / 8
    assert metrics.load_count() == 4
    assert metrics.load_success_count() == 3
    assert metrics.load_failure_count() == 1
    assert metrics.load_failure_rate() == 1 / 4
    assert metrics.total_load_time() >= 4 * 10_000_000 * 0.9
    assert metrics.average_load_time() == metrics.total_load_time() / 4
    assert metrics.storage_error_count() == 0
    assert metrics.as_dict()["request_count"] == 8


async def test_get_and_get_all_count_alike(local: str) -> None:
    by_get, by_get_all = make_node(local, "by-get"), make_node(local, "by-get-all")
    for i in [1, 2, 1, 3, 1]:
        await cacheme.get(by_get(id=i))
        await cacheme.get_all([by_get_all(id=i)])
    timing = {"total_load_time": 0, "average_load_time": 0}
    assert cacheme.stats(by_get).as_dict() | timing == cacheme.stats(by_get_all).as_dict() | timing
    assert cacheme.stats(by_get).load_count() == 3


async def test_each_node_class_has_its_own_metrics(local: str) -> None:
    parent = make_node(local)

    class Child(parent):  # type: ignore[misc, valid-type]
        pass

    await cacheme.get(parent(id=1))
    assert cacheme.stats(parent).request_count() == 1
    assert cacheme.stats(Child).request_count() == 0
    with pytest.raises(TypeError):
        cacheme.stats(object)  # type: ignore[arg-type]
