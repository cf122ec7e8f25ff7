"""Concurrent requests for one key share one load, whatever happens to them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import pytest

import cacheme
from cacheme import singleflight


def make_node(storage: str, delay: float = 0.05) -> Any:
    class Counted(cacheme.Node):
        id: int
        loads: ClassVar[int] = 0
        fail_next: ClassVar[int] = 0

        def key(self) -> str:
            return f"counted:{self.id}"

        async def load(self) -> str:
            Counted.loads += 1
            await asyncio.sleep(delay)
            if Counted.fail_next:
                Counted.fail_next -= 1
                raise RuntimeError(f"source down for {self.id}")
            return f"value-{self.id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    return Counted


async def test_thousands_of_requests_for_one_key_load_it_once(local: str) -> None:
    node_class = make_node(local)
    results = await asyncio.gather(*(cacheme.get(node_class(id=7)) for _ in range(5000)))
    assert results == ["value-7"] * 5000
    assert node_class.loads == 1
    metrics = cacheme.stats(node_class)
    assert metrics.request_count() == 5000
    assert metrics.load_count() == 1
    assert singleflight.in_flight_count() == 0


async def test_many_keys_many_requests_each_key_loaded_once(local: str) -> None:
    node_class = make_node(local, delay=0.01)
    ids = [i % 500 for i in range(10_000)]
    results = await asyncio.gather(*(cacheme.get(node_class(id=i)) for i in ids))
    assert results == [f"value-{i}" for i in ids]
    assert node_class.loads == 500
    assert singleflight.in_flight_count() == 0


async def test_failed_load_reaches_every_waiter_is_not_cached_and_is_retried(local: str) -> None:
    node_class = make_node(local)
    node_class.fail_next = 1
    results = await asyncio.gather(
        *(cacheme.get(node_class(id=1)) for _ in range(2000)), return_exceptions=True
    )
    assert len(results) == 2000
    assert all(isinstance(r, RuntimeError) and "source down for 1" in str(r) for r in results)
    assert node_class.loads == 1
    assert singleflight.in_flight_count() == 0
    # Not cached: the next request loads again, and succeeds.
    assert await cacheme.get(node_class(id=1)) == "value-1"
    assert node_class.loads == 2
    metrics = cacheme.stats(node_class)
    assert (metrics.load_failure_count(), metrics.load_success_count()) == (1, 1)


async def test_cancelling_the_first_caller_strands_nobody(local: str) -> None:
    node_class = make_node(local, delay=0.2)
    leader = asyncio.create_task(cacheme.get(node_class(id=3)))
    await asyncio.sleep(0.01)
    followers = [asyncio.create_task(cacheme.get(node_class(id=3))) for _ in range(1000)]
    await asyncio.sleep(0.01)
    leader.cancel()
    results = await asyncio.gather(*followers)
    assert results == ["value-3"] * 1000
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert node_class.loads == 1
    assert singleflight.in_flight_count() == 0


async def test_cancelling_every_caller_still_finishes_the_load_and_caches_it(local: str) -> None:
    node_class = make_node(local, delay=0.1)
    tasks = [asyncio.create_task(cacheme.get(node_class(id=4))) for _ in range(100)]
    await asyncio.sleep(0.02)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.15)
    assert singleflight.in_flight_count() == 0
    assert await cacheme.get(node_class(id=4)) == "value-4"
    assert node_class.loads == 1  # the one load ran to the end and was cached


async def test_timed_out_callers_do_not_leave_the_key_stuck(local: str) -> None:
    node_class = make_node(local, delay=0.3)
    node_class.fail_next = 1
    outcomes = await asyncio.gather(
        *(asyncio.wait_for(cacheme.get(node_class(id=5)), 0.05) for _ in range(50)), return_exceptions=True
    )
    assert all(isinstance(o, asyncio.TimeoutError) for o in outcomes)
    await asyncio.sleep(0.35)
    assert singleflight.in_flight_count() == 0
    assert await cacheme.get(node_class(id=5)) == "value-5"
    assert node_class.loads == 2


def test_two_event_loops_in_two_threads_do_not_share_flights() -> None:
    barrier = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def run(name: str) -> None:
        async def main() -> None:
            await cacheme.register_storage(f"thread-{name}", cacheme.Storage("local://lru", size=100))
            node_class = make_node(f"thread-{name}", delay=0.1)
            barrier.wait()
            results = await asyncio.gather(*(cacheme.get(node_class(id=1)) for _ in range(500)))
            outcomes[name] = (results, node_class.loads, singleflight.in_flight_count())
            await cacheme.unregister_storage(f"thread-{name}")

        try:
            asyncio.run(main())
        except BaseException as error:  # reported below
            outcomes[name] = error

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for name in ("a", "b"):
        results, loads, in_flight = outcomes[name]
        assert results == ["value-1"] * 500
        assert loads == 1
        assert in_flight == 0


async def test_get_all_waits_for_a_get_already_loading_the_same_key(local: str) -> None:
    node_class = make_node(local, delay=0.1)
    single = asyncio.create_task(cacheme.get(node_class(id=9)))
    await asyncio.sleep(0.01)
    batch = await cacheme.get_all([node_class(id=9), node_class(id=10)])
    assert batch == ["value-9", "value-10"]
    assert await single == "value-9"
    assert node_class.loads == 2  # 9 once (by get), 10 once (by get_all's load_all)


async def _cancel_every_other_task() -> None:
    """What a shutdown handler that cancels every task does, while the loop goes on."""
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()


async def test_fetches_cancelled_before_they_ran_leave_no_key_stuck(local: str) -> None:
    node_class = make_node(local, delay=0.01)
    requests = [asyncio.create_task(cacheme.get(node_class(id=i % 50))) for i in range(1000)]
    await asyncio.sleep(0)  # the requests ran and queued their misses; the fetch has not run yet
    await _cancel_every_other_task()
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    await asyncio.sleep(0)
    assert singleflight.in_flight_count() == 0
    values = await asyncio.wait_for(asyncio.gather(*(cacheme.get(node_class(id=i)) for i in range(50))), 5)
    assert values == [f"value-{i}" for i in range(50)]


async def test_get_all_fetch_cancelled_before_it_ran_leaves_no_key_stuck(local: str) -> None:
    node_class = make_node(local, delay=0.01)
    requests = [
        asyncio.create_task(cacheme.get_all([node_class(id=i), node_class(id=i + 1)]))
        for i in range(0, 100, 2)
    ]
    await asyncio.sleep(0)
    await _cancel_every_other_task()
    await asyncio.gather(*requests, return_exceptions=True)
    await asyncio.sleep(0)
    assert singleflight.in_flight_count() == 0
    values = await asyncio.wait_for(cacheme.get_all([node_class(id=i) for i in range(100)]), 5)
    assert values == [f"value-{i}" for i in range(100)]


async def test_a_fetch_cancelled_while_loading_fails_its_callers_with_an_error_not_a_cancellation(
    local: str,
) -> None:
    node_class = make_node(local, delay=0.2)
    requests = [asyncio.create_task(cacheme.get(node_class(id=7))) for _ in range(500)]
    await asyncio.sleep(0.05)  # the load is running
    for task in singleflight.table().tasks:
        task.cancel()
    outcomes = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) and "cancelled" in str(o) for o in outcomes)
    assert singleflight.in_flight_count() == 0
    assert await cacheme.get(node_class(id=7)) == "value-7"


async def test_cancelling_twenty_thousand_loads_at_once_leaves_nothing_in_flight(local: str) -> None:
    node_class = make_node(local, delay=1.0)
    requests = [asyncio.create_task(cacheme.get(node_class(id=i))) for i in range(20_000)]
    await asyncio.sleep(0.1)  # every key is loading, each in a task of its own
    assert singleflight.in_flight_count() == 20_000
    await _cancel_every_other_task()
    await asyncio.wait_for(asyncio.gather(*requests, return_exceptions=True), 10)
    await asyncio.sleep(0)
    assert singleflight.in_flight_count() == 0
    assert await asyncio.wait_for(cacheme.get(node_class(id=1)), 5) == "value-1"
