"""Prometheus metrics for cacheme.

``CachemeCollector`` is a ``prometheus_client`` custom collector: each scrape
reads one ``cacheme.snapshot()`` and turns it into metric families. Nothing is
counted twice and nothing runs between scrapes::

    prometheus_client.REGISTRY.register(cacheme_prometheus.CachemeCollector())
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

import cacheme

__all__ = ["BREAKER_STATES", "STORAGE_OPERATIONS", "CachemeCollector"]

__version__ = "1.0.0"

# The value of ``cacheme_storage_breaker_state``: higher is worse, so ``max`` over a fleet is its worst.
BREAKER_STATES: Final[Mapping[str, int]] = MappingProxyType({"closed": 0, "half_open": 1, "open": 2})

# The operations of ``cacheme_storage_errors_total``: each is exposed for every storage, 0 until it fails
# (so that ``rate()`` sees the first error). An operation the core reports beyond these is exposed too.
STORAGE_OPERATIONS: Final[tuple[str, ...]] = ("read", "write", "delete", "lease")


class _Families:
    """The metric families of one scrape, empty until ``fill``."""

    def __init__(self) -> None:
        self.requests = CounterMetricFamily(
            "cacheme_requests", "Lookups of the node class (get: 1, get_all: one per node).", labels=["node"]
        )
        self.hits = CounterMetricFamily(
            "cacheme_hits", "Lookups of the node class answered from a cache tier.", labels=["node"]
        )
        self.misses = CounterMetricFamily(
            "cacheme_misses", "Lookups of the node class no cache tier answered.", labels=["node"]
        )
        self.loads = CounterMetricFamily(
            "cacheme_loads",
            "Nodes loaded from the source, by outcome (success or failure).",
            labels=["node", "outcome"],
        )
        self.load_duration = HistogramMetricFamily(
            "cacheme_load_duration_seconds",
            "Time each load from the source took (failed loads included).",
            labels=["node"],
            unit="seconds",
        )
        self.storage_errors = CounterMetricFamily(
            "cacheme_storage_errors",
            "Keys whose operation on the storage failed, by operation (read, write, delete, lease).",
            labels=["storage", "operation"],
        )
        self.breaker_state = GaugeMetricFamily(
            "cacheme_storage_breaker_state",
            "Circuit breaker of the storage: 0 closed, 1 half-open, 2 open.",
            labels=["storage"],
        )
        self.in_flight = GaugeMetricFamily(
            "cacheme_in_flight_keys", "Keys being fetched (loaded or written back) in every event loop."
        )
        self.local_entries = GaugeMetricFamily(
            "cacheme_local_entries", "Entries held by the local (in-process) storage.", labels=["storage"]
        )

    def all(self) -> list[Metric]:
        return [
            self.requests,
            self.hits,
            self.misses,
            self.loads,
            self.load_duration,
            self.storage_errors,
            self.breaker_state,
            self.in_flight,
            self.local_entries,
        ]

    def fill(self, snapshot: cacheme.Snapshot) -> None:
        for _, node in sorted(snapshot.nodes.items()):
            labels = [node.node]
            self.requests.add_metric(labels, node.request_count)
            self.hits.add_metric(labels, node.hit_count)
            self.misses.add_metric(labels, node.miss_count)
            self.loads.add_metric([node.node, "success"], node.load_success_count)
            self.loads.add_metric([node.node, "failure"], node.load_failure_count)
            self.load_duration.add_metric(labels, _cumulative_buckets(node.load_time), node.load_time.sum)
        for name, storage in sorted(snapshot.storages.items()):
            extra = sorted(set(storage.errors) - set(STORAGE_OPERATIONS))
            for operation in (*STORAGE_OPERATIONS, *extra):
                self.storage_errors.add_metric([name, operation], storage.errors.get(operation, 0))
            state = BREAKER_STATES.get(storage.breaker_state.replace("-", "_"))
            if state is not None:  # a state this version does not know: no sample rather than a wrong one
                self.breaker_state.add_metric([name], state)
            if storage.local_entries is not None:
                self.local_entries.add_metric([name], storage.local_entries)
        self.in_flight.add_metric([], snapshot.in_flight_keys)


def _cumulative_buckets(histogram: cacheme.LoadTimeHistogram) -> list[tuple[str, float]]:
    """``(le, count of loads <= le)`` for each bound and +Inf, as Prometheus wants them.

    The snapshot's counts are per bucket; the +Inf bucket (and so ``_count``) is their sum,
    which keeps the buckets consistent with ``_count`` even if the snapshot's ``count`` were not.
    """
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*histogram.buckets, math.inf), histogram.counts, strict=True):
        total += count
        buckets.append((_le(bound), total))
    return buckets


def _le(bound: float) -> str:
    """A bucket's bound as prometheus_client's own histograms write it (Go's formatting of a float)."""
    if bound == math.inf:
        return "+Inf"
    text = repr(float(bound))
    dot = text.find(".")
    if bound > 0 and dot > 6:  # Go writes 1e+07 where Python writes 10000000.0
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


class CachemeCollector(Collector):
    """cacheme's statistics as Prometheus metrics, read from ``cacheme.snapshot()`` at each scrape.

    Register it once per registry: ``prometheus_client.REGISTRY.register(CachemeCollector())``.
    ``snapshot`` replaces ``cacheme.snapshot`` as the source (tests, or a filtered view).

    ``describe()`` returns the families without samples: the registry learns the names
    (it refuses a second collector exposing them, and ``?name[]=`` filtering finds them)
    without taking a snapshot at registration.
    """

    def __init__(self, snapshot: Callable[[], cacheme.Snapshot] | None = None) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        yield from _Families().all()

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot() if self._snapshot is not None else cacheme.snapshot()
        families = _Families()
        families.fill(snapshot)
        yield from families.all()
