"""What every runner shares: command line, the worker queue, the load counter, micro timing, the result line.

Stdlib only: it runs inside each library's own virtual environment. A runner builds a ``fetch(key)`` (trace)
or ``fetch_many(keys)`` (batch) coroutine function for its library and variant, then hands it to
:func:`drain`; the driver (``run.py``) reads the single JSON line the runner prints last.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

LOAD_SLEEP = 0.1
POOL_SIZE = 100


class LoadCounter:
    """Counts calls to the loader and the keys it loaded (a key loaded twice counts twice)."""

    def __init__(self) -> None:
        self.calls = 0
        self.keys = 0
        self.distinct: set[int] = set()

    def add(self, key: int) -> None:
        self.calls += 1
        self.keys += 1
        self.distinct.add(key)

    def add_many(self, keys: Sequence[int]) -> None:
        self.calls += 1
        self.keys += len(keys)
        self.distinct.update(keys)


LOADS = LoadCounter()


async def load_one(key: int) -> int:
    """The data source of the trace: sleeps 0.1 s, returns the key."""
    LOADS.add(key)
    await asyncio.sleep(LOAD_SLEEP)
    return key


async def load_many(keys: Sequence[int]) -> list[int]:
    """The data source of the batch: one 0.1 s round trip for the whole batch."""
    LOADS.add_many(keys)
    await asyncio.sleep(LOAD_SLEEP)
    return list(keys)


def parse_args(variants: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["trace", "batch", "micro"], required=True)
    parser.add_argument("--variant", choices=list(variants), default=variants[0])
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--keys", type=Path, help="JSON file of the trace keys or batch groups")
    parser.add_argument("--repeat", type=int, default=7, help="micro: runs, the minimum is kept")
    parser.add_argument("--number", type=int, default=100_000, help="micro: operations per run")
    return parser.parse_args()


def redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


async def drain(jobs: Sequence[Any], call: Callable[[Any], Awaitable[Any]], workers: int) -> dict[str, Any]:
    """Put every job in a queue, let ``workers`` tasks drain it, check each answer; time the whole drain."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    wrong = 0
    failed = 0
    first_error = ""

    async def worker() -> None:
        nonlocal wrong, failed, first_error
        while True:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                answer = await call(job)
            except Exception as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            expected = list(job) if isinstance(job, list) else job
            if (list(answer) if isinstance(job, list) else answer) != expected:
                wrong += 1

    gc.collect()
    background = asyncio.all_tasks()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    answered = time.perf_counter() - start
    await settle(background)
    elapsed = time.perf_counter() - start
    return {
        "elapsed": elapsed,
        "answered": answered,
        "wrong": wrong,
        "failed": failed,
        "first_error": first_error,
        "loads": LOADS.keys,
        "load_calls": LOADS.calls,
        "loaded_distinct": len(LOADS.distinct),
    }


async def settle(background: set[asyncio.Task[Any]], limit: float = 60.0) -> None:
    """Wait for the work a library left running after the last answer (e.g. write-behind to Redis).

    The clock stops only when it is done, so a library that answers before writing is timed for its writes.
    Tasks that were already running before the workers started (``background``) are not waited for.
    """
    current = asyncio.current_task()
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        others = [
            task
            for task in asyncio.all_tasks()
            if task is not current and task not in background and not task.done()
        ]
        if not others:
            return
        await asyncio.wait(others, timeout=deadline - time.perf_counter())


def load_jobs(path: Path) -> list[Any]:
    jobs: list[Any] = json.loads(path.read_text())
    return jobs


def unique_keys(jobs: Sequence[Any]) -> int:
    keys: set[int] = set()
    for job in jobs:
        if isinstance(job, list):
            keys.update(job)
        else:
            keys.add(job)
    return len(keys)


async def time_per_op(op: Callable[[], Awaitable[Any]], number: int, repeat: int) -> float:
    """Nanoseconds per operation of ``op`` (which runs ``number`` operations), best of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter_ns()
        await op()
        best = min(best, (time.perf_counter_ns() - start) / number)
    return best


async def local_hit_micro(
    get: Callable[[Any], Awaitable[Any]],
    get_all: Callable[[list[Any]], Awaitable[Any]],
    make_node: Callable[[int], Any],
    raw_get: Callable[..., Any],
    raw_args: tuple[Any, ...],
    number: int,
    repeat: int,
) -> dict[str, float]:
    """ns per local hit through a library's ``get`` (same node, new node), per ``get_all`` of 20
    local hits, and per raw cache read ``raw_get(*raw_args)`` of the same key. The nodes' tier must
    be the in-process one; the first calls fill it."""
    node = make_node(1)
    await get(node)
    batch = [make_node(i) for i in range(20)]
    await get_all(batch)
    batch_number = max(1, number // 20)

    async def get_same() -> None:
        for _ in range(number):
            await get(node)

    async def get_new() -> None:
        for _ in range(number):
            await get(make_node(1))

    async def raw() -> None:
        for _ in range(number):
            raw_get(*raw_args)

    async def get_all_20() -> None:
        for _ in range(batch_number):
            await get_all(batch)

    return {
        "get_hit_ns": await time_per_op(get_same, number, repeat),
        "get_hit_new_node_ns": await time_per_op(get_new, number, repeat),
        "theine_get_ns": await time_per_op(raw, number, repeat),
        "get_all_20_ns": await time_per_op(get_all_20, batch_number, repeat),
    }


def emit(result: dict[str, Any]) -> None:
    """Print the result line the driver reads (the last line of stdout)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
