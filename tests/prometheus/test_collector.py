"""cacheme-prometheus: CachemeCollector scraped over HTTP from prometheus_client's own server.

A fresh ``CollectorRegistry`` holds the collector; ``start_http_server`` serves it on a
free loopback port; the test runs a known sequence of requests (a local tier, a node
whose load sleeps, one whose load fails, a Redis tier behind a proxy that resets every
connection), scrapes ``/metrics`` with urllib in both exposition formats, parses them
with prometheus_client's parsers and checks every series against ``cacheme.snapshot()``
and ``cacheme.stats(Node)``.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

import cacheme
from cacheme_prometheus import CachemeCollector
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT

LOCAL = "prom-local"
REMOTE = "prom-redis"
LOAD_SECONDS = 0.03  # what PromSlowNode's load sleeps
BREAKER_FAILURES = 3
OUTCOMES = ("success", "failure")
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# The openmetrics parser is not annotated: typed here once.
parse_openmetrics: Callable[[str], Iterable[Metric]] = openmetrics_parser.text_string_to_metric_families

# Every family the collector exposes, by the name the parsers give it, with its type.
FAMILIES = {
    "cacheme_requests": "counter",
    "cacheme_hits": "counter",
    "cacheme_misses": "counter",
    "cacheme_loads": "counter",
    "cacheme_load_duration_seconds": "histogram",
    "cacheme_storage_errors": "counter",
    "cacheme_storage_breaker_state": "gauge",
    "cacheme_in_flight_keys": "gauge",
    "cacheme_local_entries": "gauge",
}
BREAKER_VALUES = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}

# A series: its sample name and its labels (an ``le`` label normalized to a float's str).
Series = tuple[str, frozenset[tuple[str, str]]]


def series(name: str, **labels: str | float) -> Series:
    if "le" in labels:
        labels["le"] = float(labels["le"])
    return name, frozenset((label, str(value)) for label, value in labels.items())


def parsed(families: Iterable[Metric]) -> tuple[dict[str, str], dict[Series, float]]:
    """(family name -> type, series -> value) of the cacheme_ families; a series twice is an error."""
    types: dict[str, str] = {}
    values: dict[Series, float] = {}
    for family in families:
        if not family.name.startswith("cacheme_"):
            continue
        types[family.name] = family.type
        for sample in family.samples:
            key = series(sample.name, **sample.labels)
            assert key not in values, f"{key} exposed twice"
            values[key] = sample.value
    return types, values


def expected_series(snapshot: cacheme.Snapshot) -> dict[Series, float]:
    """What the exposition must hold for ``snapshot``: built from the spec, not from the collector."""
    expected: dict[Series, float] = {}
    for node in snapshot.nodes.values():
        name = node.node
        expected[series("cacheme_requests_total", node=name)] = node.request_count
        expected[series("cacheme_hits_total", node=name)] = node.hit_count
        expected[series("cacheme_misses_total", node=name)] = node.miss_count
        expected[series("cacheme_loads_total", node=name, outcome="success")] = node.load_success_count
        expected[series("cacheme_loads_total", node=name, outcome="failure")] = node.load_failure_count
        histogram = node.load_time
        assert histogram.buckets == cacheme.LOAD_TIME_BUCKETS
        assert len(histogram.counts) == len(histogram.buckets) + 1
        cumulative = 0
        for bound, count in zip((*histogram.buckets, math.inf), histogram.counts, strict=True):
            cumulative += count
            expected[series("cacheme_load_duration_seconds_bucket", node=name, le=bound)] = cumulative
        assert cumulative == histogram.count
        expected[series("cacheme_load_duration_seconds_count", node=name)] = histogram.count
        expected[series("cacheme_load_duration_seconds_sum", node=name)] = histogram.sum
    for storage in snapshot.storages.values():
        for operation in {"read", "write", "delete", "lease", *storage.errors}:
            errors = series("cacheme_storage_errors_total", storage=storage.name, operation=operation)
            expected[errors] = storage.errors.get(operation, 0)
        state = BREAKER_VALUES[storage.breaker_state]
        expected[series("cacheme_storage_breaker_state", storage=storage.name)] = state
        if storage.local_entries is not None:
            expected[series("cacheme_local_entries", storage=storage.name)] = storage.local_entries
    expected[series("cacheme_in_flight_keys")] = snapshot.in_flight_keys
    return expected


@dataclass
class Exporter:
    """The registry with the collector, served by prometheus_client's HTTP server."""

    registry: CollectorRegistry
    collector: CachemeCollector
    url: str

    def scrape(self, accept: str | None = None, query: str = "") -> tuple[str, str]:
        """GET /metrics: (content type, body)."""
        request = urllib.request.Request(self.url + query, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            return response.headers["Content-Type"], response.read().decode()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    collector = CachemeCollector()
    registry.register(collector)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield Exporter(registry, collector, f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert not thread.is_alive()


@pytest_asyncio.fixture
async def local() -> AsyncIterator[str]:
    await cacheme.register_storage(LOCAL, cacheme.Storage("local://lru", size=1000))
    yield LOCAL
    await cacheme.unregister_storage(LOCAL)


@pytest_asyncio.fixture
async def broken_redis(tcp_proxy: Callable[[str, int], TcpProxy]) -> AsyncIterator[str]:
    """A Redis storage registered through the proxy, which then resets every connection.

    Its breaker opens after BREAKER_FAILURES failures and stays open (no probe for a minute).
    """
    proxy = tcp_proxy(SHARED_HOST, SHARED_PORT)
    health = cacheme.Health(
        read_timeout=0.5, write_timeout=0.5, failures=BREAKER_FAILURES, window=60.0, cool_down=60.0
    )
    await cacheme.register_storage(REMOTE, cacheme.Storage(proxy.url("redis"), health=health))
    proxy.reset()
    yield REMOTE
    await cacheme.unregister_storage(REMOTE)


class PromSourceDownError(Exception):
    pass


class PromSlowNode(cacheme.Node):
    number: int

    def key(self) -> str:
        return f"prom-slow:{self.number}"

    async def load(self) -> int:
        await asyncio.sleep(LOAD_SECONDS)
        return self.number * 2

    class Meta(cacheme.Node.Meta):
        caches = [cacheme.Cache(storage=LOCAL, ttl=timedelta(minutes=5))]


class PromFailingNode(cacheme.Node):
    number: int

    def key(self) -> str:
        return f"prom-failing:{self.number}"

    async def load(self) -> int:
        raise PromSourceDownError(self.number)

    class Meta(cacheme.Node.Meta):
        caches = [cacheme.Cache(storage=LOCAL, ttl=timedelta(minutes=5))]


class PromRemoteNode(cacheme.Node):
    number: int

    def key(self) -> str:
        return f"prom-remote:{self.number}"

    async def load(self) -> int:
        return self.number * 3

    class Meta(cacheme.Node.Meta):
        version = uuid.uuid4().hex  # keys no other run wrote
        caches = [cacheme.Cache(storage=REMOTE, ttl=timedelta(minutes=5))]


async def no_flights(timeout: float = 10.0) -> None:
    """Wait until no key is in flight in any event loop (write-backs end after callers get their value)."""
    deadline = time.monotonic() + timeout
    while cacheme.snapshot().in_flight_keys:
        assert time.monotonic() < deadline, "keys still in flight"
        await asyncio.sleep(0.01)


async def settled_scrape(exporter: Exporter) -> tuple[cacheme.Snapshot, str, str]:
    """A scrape in both formats between two equal snapshots, so the scrape saw that same state
    (the counters only grow), and that snapshot."""
    for _ in range(20):
        before = cacheme.snapshot()
        text_type, text = await asyncio.to_thread(exporter.scrape)
        openmetrics_type, openmetrics = await asyncio.to_thread(exporter.scrape, OPENMETRICS)
        after = cacheme.snapshot()
        if before == after:
            assert text_type.startswith("text/plain; version=0.0.4")
            assert openmetrics_type.startswith("application/openmetrics-text")
            return after, text, openmetrics
        await asyncio.sleep(0.05)
    raise AssertionError("cacheme's statistics kept changing during every scrape")


async def test_a_scrape_says_what_the_snapshot_and_stats_say(
    exporter: Exporter, local: str, broken_redis: str
) -> None:
    assert await cacheme.get(PromSlowNode(number=1)) == 2  # miss, load
    assert await cacheme.get(PromSlowNode(number=1)) == 2  # hit
    assert await cacheme.get(PromSlowNode(number=2)) == 4  # miss, load
    with pytest.raises(PromSourceDownError):
        await cacheme.get(PromFailingNode(number=1))  # miss, failed load
    for number in range(5):  # reads fail until the breaker opens; loaded from the source every time
        assert await cacheme.get(PromRemoteNode(number=number)) == number * 3
    await cacheme.invalidate(PromRemoteNode(number=0))  # a delete is always tried: it fails
    await no_flights()

    snapshot, text, openmetrics = await settled_scrape(exporter)
    types, values = parsed(text_string_to_metric_families(text))
    om_types, om_values = parsed(parse_openmetrics(openmetrics))
    expected = expected_series(snapshot)
    # Every value the snapshot holds, no series more, no series less; both formats alike.
    assert values == expected
    assert om_values == expected
    assert types == om_types == FAMILIES
    assert {PromSlowNode.__qualname__, PromFailingNode.__qualname__, PromRemoteNode.__qualname__} <= set(
        snapshot.nodes
    )

    # What cacheme.stats says, and what the sequence above makes of it.
    slow, failing, remote = (cacheme.stats(node) for node in (PromSlowNode, PromFailingNode, PromRemoteNode))
    for node_class, metrics in ((PromSlowNode, slow), (PromFailingNode, failing), (PromRemoteNode, remote)):
        name = node_class.__qualname__
        assert values[series("cacheme_requests_total", node=name)] == metrics.request_count()
        assert values[series("cacheme_hits_total", node=name)] == metrics.hit_count()
        assert values[series("cacheme_misses_total", node=name)] == metrics.miss_count()
        loads = {outcome: series("cacheme_loads_total", node=name, outcome=outcome) for outcome in OUTCOMES}
        assert values[loads["success"]] == metrics.load_success_count()
        assert values[loads["failure"]] == metrics.load_failure_count()
        assert values[series("cacheme_load_duration_seconds_count", node=name)] == metrics.load_count()
        total = values[series("cacheme_load_duration_seconds_sum", node=name)]
        assert total == pytest.approx(metrics.total_load_time() / 1e9, abs=1e-6)
    assert (slow.request_count(), slow.hit_count(), slow.miss_count()) == (3, 1, 2)
    assert (slow.load_success_count(), slow.load_failure_count()) == (2, 0)
    assert (failing.request_count(), failing.miss_count(), failing.load_failure_count()) == (1, 1, 1)
    assert (remote.request_count(), remote.miss_count(), remote.load_success_count()) == (5, 5, 5)

    # The slow node's histogram: both loads slept LOAD_SECONDS, so none is in a bucket below it.
    slow_name = PromSlowNode.__qualname__
    cumulative = [
        values[series("cacheme_load_duration_seconds_bucket", node=slow_name, le=bound)]
        for bound in (*cacheme.LOAD_TIME_BUCKETS, math.inf)
    ]
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == 2
    below = [
        count
        for bound, count in zip(cacheme.LOAD_TIME_BUCKETS, cumulative[:-1], strict=True)
        if bound < LOAD_SECONDS
    ]
    assert below == [0] * len(below) and below
    assert values[series("cacheme_load_duration_seconds_sum", node=slow_name)] >= 2 * LOAD_SECONDS

    # Storages: the broken Redis failed reads and the delete, its breaker is open; the local one holds 2.
    redis_errors = snapshot.storages[REMOTE].errors
    assert redis_errors.get("read", 0) >= 1
    # The breaker opened after BREAKER_FAILURES operations failed in a row, reads and write-backs alike.
    assert redis_errors.get("read", 0) + redis_errors.get("write", 0) >= BREAKER_FAILURES
    assert redis_errors.get("delete", 0) == 1
    remote_errors = {
        operation: values[series("cacheme_storage_errors_total", storage=REMOTE, operation=operation)]
        for operation in ("read", "write", "delete", "lease")
    }
    assert remote_errors == {operation: redis_errors.get(operation, 0) for operation in remote_errors}
    assert remote_errors["lease"] == 0
    assert cacheme.storage_health(REMOTE).state == "open"
    assert values[series("cacheme_storage_breaker_state", storage=REMOTE)] == 2
    assert values[series("cacheme_storage_breaker_state", storage=LOCAL)] == 0
    assert values[series("cacheme_storage_errors_total", storage=LOCAL, operation="read")] == 0
    assert values[series("cacheme_local_entries", storage=LOCAL)] == 2
    assert series("cacheme_local_entries", storage=REMOTE) not in values
    assert values[series("cacheme_in_flight_keys")] == 0


async def test_registration_describes_without_a_snapshot(exporter: Exporter) -> None:
    def no_snapshot() -> cacheme.Snapshot:
        raise AssertionError("registering must not take a snapshot")

    # The default registry calls describe() (or, without one, collect()) at registration.
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CachemeCollector(snapshot=no_snapshot))
    # The names are known to the registry: a second collector of them is refused.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(CachemeCollector())
    # describe() is collect() without samples.
    described = {family.name: (family.type, family.samples) for family in CachemeCollector().describe()}
    collected = {family.name: family.type for family in exporter.collector.collect()}
    assert {name: kind for name, (kind, _) in described.items()} == collected
    assert all(samples == [] for _, samples in described.values())
    # And so ?name[]= filtering (a restricted registry) finds them.
    _, body = await asyncio.to_thread(
        exporter.scrape, None, "?name[]=cacheme_in_flight_keys&name[]=cacheme_hits_total"
    )
    types, values = parsed(text_string_to_metric_families(body))
    assert set(types) == {"cacheme_in_flight_keys", "cacheme_hits"}
    assert values[series("cacheme_in_flight_keys")] == cacheme.snapshot().in_flight_keys


class PromBlockedNode(cacheme.Node):
    number: int

    def key(self) -> str:
        return f"prom-blocked:{self.number}"

    async def load(self) -> int:
        await PROM_RELEASE[self.number].wait()
        return self.number

    class Meta(cacheme.Node.Meta):
        caches = [cacheme.Cache(storage=LOCAL, ttl=timedelta(minutes=5))]


PROM_RELEASE: dict[int, asyncio.Event] = {}


async def test_in_flight_keys_while_loads_run(exporter: Exporter, local: str) -> None:
    await no_flights()
    PROM_RELEASE.update({number: asyncio.Event() for number in (1, 2)})
    gets = [asyncio.create_task(cacheme.get(PromBlockedNode(number=number))) for number in (1, 2, 2)]
    try:
        deadline = time.monotonic() + 10
        while cacheme.snapshot().in_flight_keys < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        _, body = await asyncio.to_thread(exporter.scrape)
        _, values = parsed(text_string_to_metric_families(body))
        assert values[series("cacheme_in_flight_keys")] == cacheme.snapshot().in_flight_keys == 2  # 2 keys
        assert values[series("cacheme_requests_total", node=PromBlockedNode.__qualname__)] == 3
    finally:
        for event in PROM_RELEASE.values():
            event.set()
        assert await asyncio.gather(*gets) == [1, 2, 2]
    await no_flights()
    _, body = await asyncio.to_thread(exporter.scrape)
    _, values = parsed(text_string_to_metric_families(body))
    assert values[series("cacheme_in_flight_keys")] == 0
    assert values[series("cacheme_loads_total", node=PromBlockedNode.__qualname__, outcome="success")] == 2


def snapshot_of(storages: dict[str, cacheme.StorageSnapshot]) -> Callable[[], cacheme.Snapshot]:
    return lambda: cacheme.Snapshot(nodes={}, storages=storages, in_flight_keys=7)


def test_breaker_states_and_operations_from_a_given_snapshot() -> None:
    storages = {
        name: cacheme.StorageSnapshot(name=name, errors=errors, breaker_state=state, local_entries=entries)
        for name, errors, state, entries in (
            ("a", {}, "closed", 10),
            ("b", {"read": 4, "scan": 2}, "open", None),
            ("c", {"write": 1}, "half-open", None),
            ("d", {}, "half_open", 0),
            ("e", {}, "melted", None),
        )
    }
    registry = CollectorRegistry()
    registry.register(CachemeCollector(snapshot=snapshot_of(storages)))
    types, values = parsed(text_string_to_metric_families(generate_latest(registry).decode()))
    assert types == FAMILIES
    breaker = {
        dict(labels)["storage"]: value
        for (name, labels), value in values.items()
        if name == "cacheme_storage_breaker_state"
    }
    assert breaker == {"a": 0, "b": 2, "c": 1, "d": 1}  # a state it does not know: no sample
    errors = {
        (dict(labels)["storage"], dict(labels)["operation"]): value
        for (name, labels), value in values.items()
        if name == "cacheme_storage_errors_total"
    }
    for storage in "acde":
        assert {op: errors[storage, op] for op in ("read", "write", "delete", "lease")} == (
            {"read": 0, "write": 1 if storage == "c" else 0, "delete": 0, "lease": 0}
        )
    assert {op: errors["b", op] for op in ("read", "write", "delete", "lease", "scan")} == {
        "read": 4,
        "write": 0,
        "delete": 0,
        "lease": 0,
        "scan": 2,  # an operation beyond the four known ones is exposed too
    }
    entries = {
        dict(labels)["storage"]: value
        for (name, labels), value in values.items()
        if name == "cacheme_local_entries"
    }
    assert entries == {"a": 10, "d": 0}
    assert values[series("cacheme_in_flight_keys")] == 7


FRESH_PROCESS = textwrap.dedent(
    """
    import json

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    import cacheme
    from cacheme_prometheus import CachemeCollector

    registry = CollectorRegistry()
    registry.register(CachemeCollector())
    scrapes = {"empty": generate_latest(registry).decode()}


    class IdleNode(cacheme.Node):
        number: int

        def key(self) -> str:
            return f"idle:{self.number}"

        async def load(self) -> int:
            return self.number

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage="nowhere", ttl=None)]


    scrapes["idle"] = generate_latest(registry).decode()
    scrapes["idle_openmetrics"] = generate_openmetrics(registry).decode()
    print(json.dumps(scrapes))
    """
)


def test_nothing_used_yet() -> None:
    """In a process where no node was used (first none defined, then one never requested),
    every family is there, well formed, and says 0."""
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    scrapes = json.loads(run.stdout)

    types, values = parsed(text_string_to_metric_families(scrapes["empty"]))
    assert types == FAMILIES  # HELP and TYPE, no sample
    assert values == {series("cacheme_in_flight_keys"): 0}

    idle = "IdleNode"
    expected = {series("cacheme_in_flight_keys"): 0.0}
    for name in ("cacheme_requests_total", "cacheme_hits_total", "cacheme_misses_total"):
        expected[series(name, node=idle)] = 0
    for outcome in ("success", "failure"):
        expected[series("cacheme_loads_total", node=idle, outcome=outcome)] = 0
    for bound in (*cacheme.LOAD_TIME_BUCKETS, math.inf):
        expected[series("cacheme_load_duration_seconds_bucket", node=idle, le=bound)] = 0
    expected[series("cacheme_load_duration_seconds_count", node=idle)] = 0
    expected[series("cacheme_load_duration_seconds_sum", node=idle)] = 0
    for families in (
        text_string_to_metric_families(scrapes["idle"]),
        parse_openmetrics(scrapes["idle_openmetrics"]),
    ):
        types, values = parsed(families)
        assert types == FAMILIES
        assert values == expected
