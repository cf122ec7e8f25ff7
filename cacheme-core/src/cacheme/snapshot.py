"""The read API for exporters and dashboards: everything cacheme counts, in one call.

``cacheme.snapshot()`` reads the counters and load-time histogram of every
node class defined, the failed operations, circuit breaker and entry count of
every registered storage, and the keys in flight in every event loop. It
copies plain numbers (no lock, no I/O), so it is cheap enough for every
scrape, and the hot path pays nothing for it. Counters only grow; a value may
be a few operations behind another read in the same snapshot (other threads
keep counting meanwhile).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cacheme import registry, singleflight
from cacheme.node import Node, nodes
from cacheme.stats import LOAD_TIME_BUCKETS, LoadTimeHistogram, Metrics
from cacheme.storage import LocalStorage

__all__ = ["NodeSnapshot", "Snapshot", "StorageSnapshot", "snapshot"]


@dataclass(frozen=True)
class NodeSnapshot:
    """One node class's counters (those of every class of that qualified name, summed)."""

    node: str  # the class's __qualname__
    request_count: int
    hit_count: int
    miss_count: int
    load_success_count: int
    load_failure_count: int
    storage_error_count: int
    load_time: LoadTimeHistogram
    counters: dict[str, int | float]  # every counter, as Metrics.as_dict() names them


@dataclass(frozen=True)
class StorageSnapshot:
    """One registered storage: its failed operations, its breaker, its entries if it is local."""

    name: str
    errors: dict[str, int]  # keys whose operation failed, by operation: read, write, delete, lease
    breaker_state: str  # "closed", "open" or "half-open"
    local_entries: int | None  # None for a remote storage (or a local one that cannot tell)


@dataclass(frozen=True)
class Snapshot:
    """Everything ``cacheme.snapshot()`` read."""

    nodes: dict[str, NodeSnapshot]  # by the classes' qualified names
    storages: dict[str, StorageSnapshot]  # by registered name
    in_flight_keys: int  # keys being fetched or written back, in every event loop of the process


def snapshot() -> Snapshot:
    """What every node class and every registered storage has counted so far."""
    by_name: dict[str, list[Metrics]] = {}
    for node_class in nodes():
        if node_class is Node:
            continue
        by_name.setdefault(node_class.__qualname__, []).append(node_class._cacheme_metrics)
    node_snapshots = {name: _node_snapshot(name, metrics) for name, metrics in sorted(by_name.items())}
    storage_snapshots = {
        name: StorageSnapshot(
            name,
            dict(storage.error_counts),
            storage.breaker.snapshot().state,
            storage.entry_count() if isinstance(storage, LocalStorage) else None,
        )
        for name, storage in sorted(registry.registered_storages().items())
    }
    return Snapshot(node_snapshots, storage_snapshots, singleflight.in_flight_everywhere())


def _node_snapshot(name: str, every: list[Metrics]) -> NodeSnapshot:
    counters = _summed(metrics.as_dict() for metrics in every)
    histograms = [metrics.load_time_histogram() for metrics in every]
    load_time = LoadTimeHistogram(
        LOAD_TIME_BUCKETS,
        tuple(sum(column) for column in zip(*(histogram.counts for histogram in histograms), strict=True)),
        sum(histogram.count for histogram in histograms),
        sum(histogram.sum for histogram in histograms),
    )
    return NodeSnapshot(
        node=name,
        request_count=int(counters["request_count"]),
        hit_count=int(counters["hit_count"]),
        miss_count=int(counters["miss_count"]),
        load_success_count=int(counters["load_success_count"]),
        load_failure_count=int(counters["load_failure_count"]),
        storage_error_count=int(counters["storage_error_count"]),
        load_time=load_time,
        counters=counters,
    )


def _summed(every: Iterable[dict[str, int | float]]) -> dict[str, int | float]:
    """The counters of several classes added up; rates and averages computed again from the sums."""
    total: dict[str, int | float] = {}
    for counters in every:
        for key, value in counters.items():
            total[key] = total.get(key, 0) + value
    requests, loads = total.get("request_count", 0), total.get("load_count", 0)
    total["hit_rate"] = total.get("hit_count", 0) / requests if requests else 0.0
    total["miss_rate"] = total.get("miss_count", 0) / requests if requests else 0.0
    total["load_failure_rate"] = total.get("load_failure_count", 0) / loads if loads else 0.0
    total["average_load_time"] = total.get("total_load_time", 0) / loads if loads else 0.0
    return total
