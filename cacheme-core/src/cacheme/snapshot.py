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

from dataclasses import dataclass

from cacheme import registry, singleflight
from cacheme.node import Node, nodes
from cacheme.stats import LoadTimeHistogram, Metrics
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
    metrics = every[0] if len(every) == 1 else Metrics.merged(every)
    counters = metrics.as_dict()
    return NodeSnapshot(
        node=name,
        request_count=metrics.request_count(),
        hit_count=metrics.hit_count(),
        miss_count=metrics.miss_count(),
        load_success_count=metrics.load_success_count(),
        load_failure_count=metrics.load_failure_count(),
        storage_error_count=metrics.storage_error_count(),
        load_time=metrics.load_time_histogram(),
        counters=counters,
    )
