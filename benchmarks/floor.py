"""The ideal time of a trace or batch run: a cache that costs nothing but its loads (stdlib only).

A discrete-event simulation of the workload with zero overhead: ``workers`` take jobs from the queue in
order; a key seen before is answered at once if its load has finished, or when it finishes if it is still
loading (singleflight); a new key is loaded once, taking ``load_time``. A batch job loads its new keys
with one call of ``load_time`` and also waits for its keys that other jobs are still loading. No library
can beat these times with this loader, so they are the floor the measured times are read against.

    python benchmarks/floor.py      # the floors of the default trace and batch
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

LOAD_TIME = 0.1


def trace_floor(keys: Sequence[int], workers: int, load_time: float = LOAD_TIME) -> float:
    """Seconds until the last of ``keys`` is answered by ``workers`` workers."""
    free = [0.0] * min(workers, len(keys))  # when each worker takes its next job
    loaded_at: dict[int, float] = {}  # when each key's one load ends
    for key in keys:
        now = heapq.heappop(free)
        ready = loaded_at.get(key)
        if ready is None:
            ready = loaded_at[key] = now + load_time
        heapq.heappush(free, max(now, ready))
    return max(free, default=0.0)


def batch_floor(groups: Sequence[Sequence[int]], workers: int, load_time: float = LOAD_TIME) -> float:
    """Seconds until the last of ``groups`` (one ``get_all`` each) is answered by ``workers`` workers."""
    free = [0.0] * min(workers, len(groups))
    loaded_at: dict[int, float] = {}
    for group in groups:
        now = heapq.heappop(free)
        done = now
        new = [key for key in group if key not in loaded_at]
        if new:
            done = now + load_time
            for key in new:
                loaded_at[key] = done
        for key in group:
            done = max(done, loaded_at[key])
        heapq.heappush(free, done)
    return max(free, default=0.0)


if __name__ == "__main__":
    import zipf

    trace = zipf.trace_keys(200_000)
    batch = zipf.batch_keys(10_000)
    for workers in (1_000, 10_000, 100_000):
        print(f"trace, {workers:,} workers: {trace_floor(trace, workers):.2f} s")
    for workers in (1_000, 10_000):
        print(f"batch, {workers:,} workers: {batch_floor(batch, workers):.2f} s")
