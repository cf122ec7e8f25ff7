"""Per node class counters, kept as plain ints on the hot path, and each node's load times as a
histogram (``LOAD_TIME_BUCKETS``), recorded by the source's loads only (never by a hit)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["LOAD_TIME_BUCKETS", "LoadTimeHistogram", "Metrics"]

# The histogram's upper bounds, in seconds: from a fast database round trip to a load that
# outlives any sensible deadline. A load of more than 30 s lands in the last (+Inf) bucket.
LOAD_TIME_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BOUNDS_NS = [round(bound * 1e9) for bound in LOAD_TIME_BUCKETS]


@dataclass(frozen=True)
class LoadTimeHistogram:
    """How long a node class's loads took: ``counts[i]`` loads took at most ``buckets[i]``
    seconds and more than the bound before (not cumulative); ``counts[-1]`` more than the last
    bound. ``count`` loads in all, ``sum`` seconds in all (a batch's time once per node it loaded)."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float


class Metrics:
    """What happened to one node class. Read it with ``cacheme.stats(NodeClass)``.

    The engine increments the attributes directly; the methods are the
    public, read-only view (the names of the original cacheme API).
    """

    __slots__ = (
        "_hits",
        "_load_buckets",
        "_load_observed_ns",
        "_lease_fail_open",
        "_lease_fenced",
        "_lease_waits",
        "_leases",
        "_load_failures",
        "_load_successes",
        "_load_time_ns",
        "_local_hits",
        "_refresh_failures",
        "_refreshes",
        "_requests",
        "_stale",
        "_storage_errors",
    )

    def __init__(self) -> None:
        # A get answered at once by a leading local tier counts in _local_hits alone (one
        # increment on the hottest path); every other lookup in _requests, and in _hits if a
        # tier answered it.
        self._local_hits = 0
        self._requests = 0
        self._hits = 0
        self._load_successes = 0
        self._load_failures = 0
        self._load_time_ns = 0
        self._load_buckets = [0] * (len(LOAD_TIME_BUCKETS) + 1)
        self._load_observed_ns = 0  # the histogram's sum (a batch's time once per node)
        self._storage_errors = 0
        self._refreshes = 0
        self._refresh_failures = 0
        self._stale = 0
        self._leases = 0
        self._lease_waits = 0
        self._lease_fail_open = 0
        self._lease_fenced = 0

    def request_count(self) -> int:
        """Lookups: one per ``get``, one per node of a ``get_all``."""
        return self._requests + self._local_hits

    def hit_count(self) -> int:
        """Lookups answered from a cache tier."""
        return self._hits + self._local_hits

    def hit_rate(self) -> float:
        requests = self.request_count()
        return self.hit_count() / requests if requests else 0.0

    def miss_count(self) -> int:
        return self._requests - self._hits

    def miss_rate(self) -> float:
        requests = self.request_count()
        return self.miss_count() / requests if requests else 0.0

    def load_count(self) -> int:
        """Nodes loaded from the source, successfully or not."""
        return self._load_successes + self._load_failures

    def load_success_count(self) -> int:
        return self._load_successes

    def load_failure_count(self) -> int:
        return self._load_failures

    def load_failure_rate(self) -> float:
        loads = self.load_count()
        return self._load_failures / loads if loads else 0.0

    def total_load_time(self) -> int:
        """Time spent loading from the source, in nanoseconds."""
        return self._load_time_ns

    def average_load_time(self) -> float:
        """Nanoseconds per load."""
        loads = self.load_count()
        return self._load_time_ns / loads if loads else 0.0

    @classmethod
    def merged(cls, every: Iterable[Metrics]) -> Metrics:
        """One Metrics whose counters are the sums of those of ``every`` (rates follow from them)."""
        total = cls()
        for metrics in every:
            for name in cls.__slots__:
                mine = getattr(total, name)
                if isinstance(mine, list):
                    setattr(total, name, [a + b for a, b in zip(mine, getattr(metrics, name), strict=True)])
                else:
                    setattr(total, name, mine + getattr(metrics, name))
        return total

    def observe_loads(self, elapsed_ns: int, nodes: int = 1) -> None:
        """Put ``nodes`` loads that took ``elapsed_ns`` each into the load-time histogram."""
        self._load_buckets[bisect.bisect_left(_BOUNDS_NS, elapsed_ns)] += nodes
        self._load_observed_ns += elapsed_ns * nodes

    def load_time_histogram(self) -> LoadTimeHistogram:
        """The load times so far (successful and failed loads alike)."""
        counts = tuple(self._load_buckets)
        return LoadTimeHistogram(LOAD_TIME_BUCKETS, counts, sum(counts), self._load_observed_ns / 1e9)

    def storage_error_count(self) -> int:
        """Keys whose storage read or write failed (each read a miss, each write skipped)."""
        return self._storage_errors

    def refresh_count(self) -> int:
        """Background reloads started by ``refresh_after`` or ``early_refresh`` (their loads are
        counted in ``load_count`` too)."""
        return self._refreshes

    def refresh_failure_count(self) -> int:
        """Background reloads whose load failed (logged, never raised to a caller)."""
        return self._refresh_failures

    def stale_count(self) -> int:
        """Failed loads answered with an expired entry (``stale_if_error``) instead of the error."""
        return self._stale

    def lease_count(self) -> int:
        """Leases this process was granted (``Meta.lease``): keys it loaded for the whole fleet."""
        return self._leases

    def lease_wait_count(self) -> int:
        """Keys this process waited for while another process held their lease."""
        return self._lease_waits

    def lease_fail_open_count(self) -> int:
        """Keys loaded without a lease because the lease tier failed or its breaker was open."""
        return self._lease_fail_open

    def lease_fenced_count(self) -> int:
        """Writes refused by the lease tier: the lease had been voided (``invalidate``, ``refresh``)
        or had expired and been taken by another process meanwhile."""
        return self._lease_fenced

    def as_dict(self) -> dict[str, int | float]:
        return {
            "request_count": self.request_count(),
            "hit_count": self.hit_count(),
            "hit_rate": self.hit_rate(),
            "miss_count": self.miss_count(),
            "miss_rate": self.miss_rate(),
            "load_count": self.load_count(),
            "load_success_count": self.load_success_count(),
            "load_failure_count": self.load_failure_count(),
            "load_failure_rate": self.load_failure_rate(),
            "total_load_time": self.total_load_time(),
            "average_load_time": self.average_load_time(),
            "storage_error_count": self.storage_error_count(),
            "refresh_count": self.refresh_count(),
            "refresh_failure_count": self.refresh_failure_count(),
            "stale_count": self.stale_count(),
            "lease_count": self.lease_count(),
            "lease_wait_count": self.lease_wait_count(),
            "lease_fail_open_count": self.lease_fail_open_count(),
            "lease_fenced_count": self.lease_fenced_count(),
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value}" for name, value in self.as_dict().items())
        return f"Metrics({fields})"
