"""What exporters read: load-time histograms, storage errors by operation, breakers, entries,
keys in flight (``cacheme.snapshot()``), and the hooks run around every source load."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme.stats import Metrics
from tests.core.test_storage_errors import BrokenLocal


def timed_node(storage: str) -> Any:
    """A node class whose load sleeps ``id % 100`` milliseconds; ids from 100 up fail."""

    class Timed(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"timed:{self.id}"

        async def load(self) -> int:
            await asyncio.sleep(self.id % 100 / 1000)
            if self.id >= 100:
                raise LookupError(self.id)
            return self.id

        class Meta(cacheme.Node.Meta):
            version = "v1"

    Timed.Meta.caches = [cacheme.Cache(storage, timedelta(seconds=60))]
    return Timed


def test_a_load_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    metrics = Metrics()
    metrics.observe_loads(500_000)  # 0.5 ms: the first bucket (le 0.0005)
    metrics.observe_loads(500_001)  # just above: the second
    metrics.observe_loads(3_000_000, nodes=4)  # a batch of 4 nodes in 3 ms: le 0.005, four times
    metrics.observe_loads(31_000_000_000)  # 31 s: +Inf
    histogram = metrics.load_time_histogram()
    assert histogram.buckets == cacheme.LOAD_TIME_BUCKETS and len(histogram.counts) == 16
    assert histogram.counts[0] == 1 and histogram.counts[1] == 1 and histogram.counts[3] == 4
    assert histogram.counts[-1] == 1 and histogram.count == 7
    assert histogram.sum == pytest.approx(0.0005 + 0.000500001 + 4 * 0.003 + 31)


async def test_the_snapshot_counts_requests_loads_and_load_times(local: str) -> None:
    timed = timed_node(local)
    for _ in range(3):
        assert await cacheme.get(timed(id=20)) == 20  # one load of ~20 ms, then two hits
    with pytest.raises(LookupError):
        await cacheme.get(timed(id=103))  # fails after 3 ms
    node = cacheme.snapshot().nodes[timed.__qualname__]
    stats = cacheme.stats(timed)
    assert (node.request_count, node.hit_count, node.miss_count) == (4, 2, 2)
    assert (node.load_success_count, node.load_failure_count) == (1, 1)
    assert node.counters == stats.as_dict()
    assert node.load_time.count == stats.load_count() == 2
    counts = node.load_time.counts
    assert counts[3] + counts[4] == 1  # 3 ms: le 0.005 (le 0.01 on a busy machine)
    assert counts[5] + counts[6] == 1  # 20 ms: le 0.025 (le 0.05 on a busy machine)
    assert sum(counts) == 2
    assert node.load_time.sum == pytest.approx(stats.total_load_time() / 1e9)


async def test_a_batch_load_is_one_observation_per_node(local: str) -> None:
    class Batched(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"batched:{self.id}"

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node[Any]]) -> list[int]:
            await asyncio.sleep(0.002)
            return [node.id for node in nodes]  # type: ignore[attr-defined]

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache("local", None)]

    assert await cacheme.get_all([Batched(id=i) for i in range(5)]) == list(range(5))
    histogram = cacheme.snapshot().nodes[Batched.__qualname__].load_time
    assert histogram.count == 5 == cacheme.stats(Batched).load_count()
    assert histogram.counts[2] + histogram.counts[3] == 5  # 2 ms each: le 0.0025 (0.005 if busy)
    # One load_all call: its time counted once in total_load_time, once per node in the histogram.
    assert histogram.sum == pytest.approx(5 * cacheme.stats(Batched).total_load_time() / 1e9)


async def test_storage_errors_by_operation_breaker_state_and_entries(local: str) -> None:
    await cacheme.register_storage("broken-r", BrokenLocal(reads_fail=True, writes_fail=True))
    try:

        class OverBroken(cacheme.Node):
            id: int

            def key(self) -> str:
                return f"over-broken:{self.id}"

            async def load(self) -> int:
                return self.id

            class Meta(cacheme.Node.Meta):
                caches = [cacheme.Cache("broken-r", None), cacheme.Cache("local", None)]

        for i in range(3):
            assert await cacheme.get(OverBroken(id=i)) == i
        taken = cacheme.snapshot()
        broken, good = taken.storages["broken-r"], taken.storages[local]
        assert broken.errors == {"read": 3, "write": 3}
        assert broken.breaker_state == "closed"  # a local storage has no breaker to open
        assert broken.local_entries is None  # it cannot tell (no len())
        assert good.errors == {} and good.local_entries == 3
        assert taken.nodes[OverBroken.__qualname__].storage_error_count == 6
    finally:
        await cacheme.unregister_storage("broken-r")


def twin_node(storage: str) -> Any:
    """A node class of a qualified name of its own (each call makes one more of that name)."""

    class Twin(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"twin:{self.id}"

        async def load(self) -> int:
            return self.id

        class Meta(cacheme.Node.Meta):
            version = "v1"

    Twin.Meta.caches = [cacheme.Cache(storage, timedelta(seconds=60))]
    return Twin


async def test_classes_of_one_qualified_name_are_summed(local: str) -> None:
    first, second = twin_node(local), twin_node(local)
    await cacheme.get(first(id=1))
    await cacheme.get(second(id=2))
    await cacheme.get(second(id=2))
    node = cacheme.snapshot().nodes[first.__qualname__]
    assert (node.request_count, node.hit_count, node.load_time.count) == (3, 1, 2)
    assert node.counters["hit_rate"] == pytest.approx(1 / 3)


async def test_keys_in_flight_are_counted_in_every_loop(local: str) -> None:
    timed = timed_node(local)
    getting = asyncio.gather(*(cacheme.get(timed(id=50 + i)) for i in range(4)))
    await asyncio.sleep(0.02)
    assert cacheme.snapshot().in_flight_keys == 4
    await getting
    assert cacheme.snapshot().in_flight_keys == 0


async def test_load_hooks_run_around_each_load_and_see_its_outcome(local: str) -> None:
    timed = timed_node(local)
    seen: list[tuple[str, Any, int, str]] = []

    @contextlib.contextmanager
    def hook(info: cacheme.LoadInfo) -> Iterator[None]:
        seen.append(("enter", info.key, info.size, info.node))
        try:
            yield
        except LookupError:
            seen.append(("failed", info.key, info.size, info.node))
            raise
        seen.append(("exit", info.key, info.size, info.node))

    remove = cacheme.add_load_hook(hook)
    try:
        await cacheme.get(timed(id=1))
        await cacheme.get(timed(id=1))  # a hit: no load, no hook
        with pytest.raises(LookupError):
            await cacheme.get(timed(id=101))
    finally:
        remove()
    await cacheme.get(timed(id=3))  # removed: not seen
    key, failing = timed(id=1).full_key(), timed(id=101).full_key()
    name = timed.__qualname__
    assert seen == [
        ("enter", key, 1, name),
        ("exit", key, 1, name),
        ("enter", failing, 1, name),
        ("failed", failing, 1, name),
    ]


async def test_a_hook_that_raises_never_fails_a_load(local: str, caplog: pytest.LogCaptureFixture) -> None:
    timed = timed_node(local)

    def broken(info: cacheme.LoadInfo) -> contextlib.AbstractContextManager[None]:
        raise RuntimeError("a broken tracer")

    class BrokenExit(contextlib.AbstractContextManager[None]):
        def __exit__(self, *exc_info: object) -> None:
            raise RuntimeError("a broken exit")

    removers = [cacheme.add_load_hook(broken), cacheme.add_load_hook(lambda info: BrokenExit())]
    try:
        assert await cacheme.get(timed(id=4)) == 4
    finally:
        for remove in removers:
            remove()
    assert "a broken tracer" in caplog.text and "a broken exit" in caplog.text
