"""Zipf-distributed keys for the trace and batch workloads, generated once and shared by every runner.

The distribution is the one of Go's ``rand.Zipf(r, s, v, imax)``: an integer ``k`` in ``[0, imax]`` is drawn
with probability proportional to ``(v + k) ** -s``. We sample it exactly by inverting the cumulative
distribution (a table of ``imax + 1`` cumulative weights and a binary search), with a fixed seed, so every
library in a run sees the very same sequence of keys.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from pathlib import Path


class Zipf:
    """Draws integers in ``[0, imax]`` with ``P(k)`` proportional to ``(v + k) ** -s``."""

    def __init__(self, s: float, v: float, imax: int, seed: int) -> None:
        if s <= 1.0 or v < 1.0 or imax < 0:
            raise ValueError("Zipf needs s > 1, v >= 1 and imax >= 0")
        weights = ((v + k) ** -s for k in range(imax + 1))
        self._cumulative = list(itertools.accumulate(weights))
        self._total = self._cumulative[-1]
        self._random = random.Random(seed)

    def draw(self) -> int:
        target = self._random.random() * self._total
        return bisect.bisect_right(self._cumulative, target)


TRACE_S = 1.001
BATCH_S = 1.0001
ZIPF_V = 10.0
ZIPF_IMAX = 200_000
SEED = 20_240_601


def trace_keys(requests: int, seed: int = SEED) -> list[int]:
    """The trace: ``requests`` keys drawn one by one (s = 1.001, v = 10, imax = 200,000)."""
    zipf = Zipf(TRACE_S, ZIPF_V, ZIPF_IMAX, seed)
    return [zipf.draw() for _ in range(requests)]


def batch_keys(calls: int, size: int = 20, seed: int = SEED) -> list[list[int]]:
    """``calls`` groups of ``size`` distinct keys each (s = 1.0001, v = 10, imax = 200,000)."""
    zipf = Zipf(BATCH_S, ZIPF_V, ZIPF_IMAX, seed)
    groups: list[list[int]] = []
    for _ in range(calls):
        group: dict[int, None] = {}
        while len(group) < size:
            group[zipf.draw()] = None
        groups.append(list(group))
    return groups


def write_trace(path: Path, requests: int) -> int:
    """Write the trace to ``path`` (JSON list) unless it is there already; return its unique key count."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(trace_keys(requests)))
        tmp.replace(path)
    keys: list[int] = json.loads(path.read_text())
    return len(set(keys))


def write_batch(path: Path, calls: int) -> int:
    """Write the batch groups to ``path`` (JSON list of lists) unless there already; return unique keys."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(batch_keys(calls)))
        tmp.replace(path)
    groups: list[list[int]] = json.loads(path.read_text())
    return len({key for group in groups for key in group})


if __name__ == "__main__":
    keys = trace_keys(200_000)
    print(f"trace: {len(keys)} requests, {len(set(keys))} unique keys")
    groups = batch_keys(10_000)
    print(f"batch: {len(groups)} calls, {len({k for g in groups for k in g})} unique keys")
