"""Issue 10, point 1: every storage works on every event loop.

A storage registered in one ``asyncio.run`` serves the next one; four threads,
each running its own event loop, share one storage. Before per-loop pools the
SQL storages failed here ("another operation is in progress", "Event loop is
closed"), SQLite could hang, and PostgreSQL crashed the interpreter.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest

import cacheme
from tests.loops.conftest import Backend

THREADS = 4
GETS_PER_THREAD = 5_000
KEYS_PER_THREAD = 500
RUNS = 5
# Four threads each running 5,000 gets on 2 cores (and, for Mongo, the stand-in serving them in this
# process) leave operations waiting for the CPU far longer than the default read deadline: these
# tests are about event loops, so their storages get deadlines that CPU starvation cannot reach.
PATIENT = cacheme.Health(read_timeout=60, write_timeout=60)


def node_class(storage_name: str) -> Any:
    class LoopNode(cacheme.Node):
        number: int

        def key(self) -> str:
            return f"loops:{self.number}"

        async def load(self) -> int:
            return self.number * 7

        class Meta(cacheme.Node.Meta):
            version = uuid.uuid4().hex[:8]  # keys of this test alone
            caches = [cacheme.Cache(storage=storage_name, ttl=timedelta(minutes=10))]

    return LoopNode


def test_registered_in_one_run_used_in_the_next(backend: Backend) -> None:
    name = f"loops-{uuid.uuid4().hex[:8]}"
    node = node_class(name)

    async def first() -> list[int]:
        await cacheme.register_storage(name, cacheme.Storage(backend.url, health=PATIENT, **backend.options))
        return list(await asyncio.gather(*(cacheme.get(node(number=i)) for i in range(20))))

    async def second() -> list[int]:
        return list(await asyncio.gather(*(cacheme.get(node(number=i)) for i in range(20))))

    try:
        assert asyncio.run(first()) == [i * 7 for i in range(20)]
        assert asyncio.run(second()) == [i * 7 for i in range(20)]
        assert asyncio.run(second()) == [i * 7 for i in range(20)]
    finally:
        asyncio.run(cacheme.unregister_storage(name))
    metrics = cacheme.stats(node)
    assert metrics.load_count() == 20
    assert metrics.hit_count() == 40  # 20 of 20 hits in each later run
    assert metrics.storage_error_count() == 0


async def write_backs_done() -> None:
    for _ in range(3000):
        if not cacheme.singleflight.in_flight_count():
            return
        await asyncio.sleep(0.01)


def _run_thread(node: Any, first: int, errors: list[BaseException], values: dict[int, list[int]]) -> None:
    async def run() -> None:
        keys = range(first, first + KEYS_PER_THREAD)
        loaded = await asyncio.gather(*(cacheme.get(node(number=k)) for k in keys))
        rest = [keys[i % KEYS_PER_THREAD] for i in range(GETS_PER_THREAD - KEYS_PER_THREAD)]
        served = await asyncio.gather(*(cacheme.get(node(number=k)) for k in rest))
        values[first] = [*loaded, *served]
        await write_backs_done()  # this test is about loops; test_exit.py covers write-backs cut by an exit

    try:
        asyncio.run(run())
    except BaseException as error:  # reported by the test
        errors.append(error)


@pytest.mark.slow
@pytest.mark.parametrize("run", range(RUNS))
def test_four_threads_each_with_its_own_loop(backend: Backend, run: int) -> None:
    name = f"loops-{uuid.uuid4().hex[:8]}"
    node = node_class(name)
    storage = cacheme.Storage(backend.url, health=PATIENT, **backend.options)
    asyncio.run(cacheme.register_storage(name, storage))
    errors: list[BaseException] = []
    values: dict[int, list[int]] = {}
    try:
        threads = [
            threading.Thread(target=_run_thread, args=(node, t * 10_000, errors, values))
            for t in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads), "a thread hung"
    finally:
        asyncio.run(cacheme.unregister_storage(name))
    assert errors == []
    for t in range(THREADS):
        first = t * 10_000
        expected_keys = [*range(first, first + KEYS_PER_THREAD)]
        expected_keys += [first + i % KEYS_PER_THREAD for i in range(GETS_PER_THREAD - KEYS_PER_THREAD)]
        assert values[first] == [k * 7 for k in expected_keys]
    metrics = cacheme.stats(node)
    assert metrics.storage_error_count() == 0
    assert metrics.request_count() == THREADS * GETS_PER_THREAD
    assert metrics.load_count() == THREADS * KEYS_PER_THREAD
    assert metrics.hit_count() == THREADS * (GETS_PER_THREAD - KEYS_PER_THREAD)


def test_a_run_that_ends_at_its_last_answer_still_writes_what_it_loaded(backend: Backend) -> None:
    """``asyncio.run`` cancels every task once its main coroutine returns: the write-backs of the last
    answers (sent together, one loop turn later, by the storages' own batches too) still land."""
    name = f"loops-{uuid.uuid4().hex[:8]}"
    loaded: list[int] = []

    class ExitNode(cacheme.Node):
        number: int

        def key(self) -> str:
            return f"exit:{self.number}"

        async def load(self) -> int:
            loaded.append(self.number)
            return self.number * 7

        class Meta(cacheme.Node.Meta):
            version = uuid.uuid4().hex[:8]
            caches = [cacheme.Cache(storage=name, ttl=timedelta(minutes=10))]

    async def first() -> list[int]:
        await cacheme.register_storage(name, cacheme.Storage(backend.url, health=PATIENT, **backend.options))
        return list(await asyncio.gather(*(cacheme.get(ExitNode(number=i)) for i in range(200))))

    async def second() -> list[int]:
        return list(await asyncio.gather(*(cacheme.get(ExitNode(number=i)) for i in range(200))))

    try:
        assert asyncio.run(first()) == [i * 7 for i in range(200)]
        assert asyncio.run(second()) == [i * 7 for i in range(200)]
        assert sorted(loaded) == list(range(200))  # the second run read every key back
    finally:
        asyncio.run(cacheme.unregister_storage(name))
