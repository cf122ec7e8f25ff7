"""cacheme_opentelemetry: the metrics equal what cacheme counts, one span per source load, and
uninstrument() stops everything. Read with the SDK's in-memory reader and exporter."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import cacheme
import cacheme_opentelemetry

STORAGE = "otel-local"
BROKEN = "otel-broken"
LOAD_TIME = 0.01
# opentelemetry-api 1.30 and later take bucket advice (the SDK of the same version follows it).
ADVICE = "explicit_bucket_boundaries_advisory" in inspect.signature(Meter.create_histogram).parameters
# The tracer a load makes its own span with, as a load calling a traced database would.
LOAD_TRACERS: list[trace.Tracer] = []


class OtelTestUser(cacheme.Node):
    user_id: int

    def key(self) -> str:
        return f"user:{self.user_id}:email"

    async def load(self) -> str:
        await asyncio.sleep(LOAD_TIME)
        if LOAD_TRACERS:
            with LOAD_TRACERS[0].start_as_current_span("otel-test.query"):
                await asyncio.sleep(0)
        return f"user-{self.user_id}@example.com"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage=STORAGE, ttl=timedelta(minutes=5))]


class SourceDownError(Exception):
    pass


class OtelTestBroken(cacheme.Node):
    user_id: int

    def key(self) -> str:
        return f"broken-user:{self.user_id}"

    async def load(self) -> str:
        await asyncio.sleep(LOAD_TIME)
        raise SourceDownError("the source is down")  # names no key: attributes are checked for keys

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage=STORAGE, ttl=None)]


class OtelTestBatch(cacheme.Node):
    item: int

    def key(self) -> str:
        return f"item:{self.item}"

    async def load(self) -> int:
        raise AssertionError("loaded by load_all only")

    @classmethod
    async def load_all(cls, nodes: Sequence[cacheme.Node]) -> list[int]:
        await asyncio.sleep(LOAD_TIME)
        items = [node.item for node in nodes if isinstance(node, OtelTestBatch)]
        if any(item < 0 for item in items):
            raise SourceDownError("the batch source is down")
        return [item * 10 for item in items]

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage=STORAGE, ttl=None)]


class BrokenReads(cacheme.LocalStorage):
    """An in-process tier whose every read fails: storage errors to count."""

    def __init__(self) -> None:
        super().__init__("broken://")
        self.data: dict[str, Any] = {}

    async def close(self) -> None:
        return None

    def get_sync(self, key: str) -> Any:
        raise OSError("broken")

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        self.data[key] = value

    def delete_sync(self, key: str) -> None:
        self.data.pop(key, None)


class OtelTestOverBroken(cacheme.Node):
    number: int

    def key(self) -> str:
        return f"over-broken:{self.number}"

    async def load(self) -> int:
        return self.number

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage=BROKEN, ttl=None), cacheme.Cache(storage=STORAGE, ttl=None)]


NODES = ("OtelTestUser", "OtelTestBroken", "OtelTestBatch", "OtelTestOverBroken")


@dataclass
class Telemetry:
    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    meter_provider: MeterProvider
    tracer_provider: TracerProvider


@pytest_asyncio.fixture
async def storages() -> AsyncIterator[None]:
    await cacheme.register_storage(STORAGE, cacheme.Storage("local://lru", size=1000))
    await cacheme.register_storage(BROKEN, BrokenReads())
    try:
        yield
    finally:
        await cacheme.unregister_storage(STORAGE)
        await cacheme.unregister_storage(BROKEN)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield Telemetry(reader, exporter, meter_provider, tracer_provider)
    LOAD_TRACERS.clear()
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
def instrumented(telemetry: Telemetry) -> Iterator[cacheme_opentelemetry.Instrumentation]:
    instrumentation = cacheme_opentelemetry.instrument(
        telemetry.meter_provider, telemetry.tracer_provider, spans=True
    )
    try:
        yield instrumentation
    finally:
        instrumentation.uninstrument()


def collect(reader: InMemoryMetricReader) -> dict[str, list[NumberDataPoint | HistogramDataPoint]]:
    """Every data point of cacheme's scope, by metric name."""
    found: dict[str, list[NumberDataPoint | HistogramDataPoint]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data is not None else []:
        for scope_metrics in resource_metrics.scope_metrics:
            assert scope_metrics.scope.name == cacheme_opentelemetry.SCOPE
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, (NumberDataPoint, HistogramDataPoint))
                    found.setdefault(metric.name, []).append(point)
    return found


def values(points: list[NumberDataPoint | HistogramDataPoint]) -> dict[tuple[tuple[str, Any], ...], float]:
    """A counter's values by their attributes (sorted (name, value) pairs)."""
    result: dict[tuple[tuple[str, Any], ...], float] = {}
    for point in points:
        assert isinstance(point, NumberDataPoint)
        result[tuple(sorted((point.attributes or {}).items()))] = point.value
    return result


def by_node(points: list[NumberDataPoint | HistogramDataPoint], **more: str) -> dict[str, float]:
    """A counter's values for this module's nodes, by node (the other attributes as given)."""
    result: dict[str, float] = {}
    for attributes, value in values(points).items():
        found = dict(attributes)
        node = found.pop("cacheme.node")
        if node in NODES and found == {f"cacheme.{name}": v for name, v in more.items()}:
            result[str(node)] = value
    return result


def load_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == "cacheme.load"]


def attribute_texts(span: ReadableSpan) -> list[str]:
    """Every attribute value of the span and of its events, as text."""
    texts = [str(value) for value in (span.attributes or {}).values()]
    for event in span.events:
        texts += [str(value) for value in (event.attributes or {}).values()]
    return texts


async def known_sequence() -> None:
    await cacheme.get(OtelTestUser(user_id=1))  # miss, load
    await cacheme.get(OtelTestUser(user_id=1))  # hit
    # hit, and two misses loaded each by itself (the default load_all): 2 loads
    await cacheme.get_all([OtelTestUser(user_id=1), OtelTestUser(user_id=2), OtelTestUser(user_id=3)])
    with pytest.raises(SourceDownError):
        await cacheme.get(OtelTestBroken(user_id=1))  # miss, failed load
    # OtelTestBatch has its own load_all: one call per batch
    await cacheme.get_all([OtelTestBatch(item=1), OtelTestBatch(item=2), OtelTestBatch(item=3)])  # 3 misses
    await cacheme.get_all([OtelTestBatch(item=1), OtelTestBatch(item=4)])  # hit, and a batch of 1
    with pytest.raises(SourceDownError):
        await cacheme.get_all([OtelTestBatch(item=-1), OtelTestBatch(item=-2)])  # a failed batch of 2
    assert await cacheme.get(OtelTestOverBroken(number=5)) == 5  # a read error on the broken tier, a load


@pytest.mark.usefixtures("storages")
async def test_the_metrics_are_what_cacheme_counts(
    telemetry: Telemetry, instrumented: cacheme_opentelemetry.Instrumentation
) -> None:
    before = cacheme.snapshot()
    await known_sequence()
    points = collect(telemetry.reader)
    now = cacheme.snapshot()

    # Every counter is the snapshot's, node by node (the snapshot of the same moment).
    mine = {name: node for name, node in now.nodes.items() if name in NODES}
    assert set(mine) == set(NODES)
    assert by_node(points["cacheme.requests"]) == {name: node.request_count for name, node in mine.items()}
    assert by_node(points["cacheme.hits"]) == {name: node.hit_count for name, node in mine.items()}
    assert by_node(points["cacheme.misses"]) == {name: node.miss_count for name, node in mine.items()}
    successes = by_node(points["cacheme.loads"], outcome="success")
    failures = by_node(points["cacheme.loads"], outcome="failure")
    assert successes == {name: node.load_success_count for name, node in mine.items()}
    assert failures == {name: node.load_failure_count for name, node in mine.items()}
    for name in NODES:
        metrics = cacheme.stats(globals()[name])
        assert successes[name] == metrics.load_success_count()
        assert failures[name] == metrics.load_failure_count()
        assert by_node(points["cacheme.requests"])[name] == metrics.request_count()

    # ... and the snapshot moved as the sequence says (other tests may have used the classes before).
    def moved(name: str, field: str) -> int:
        earlier = before.nodes.get(name)
        return int(getattr(now.nodes[name], field) - (getattr(earlier, field) if earlier else 0))

    assert [
        moved("OtelTestUser", field) for field in ("request_count", "hit_count", "load_success_count")
    ] == [5, 2, 3]
    assert [moved("OtelTestBroken", field) for field in ("request_count", "load_failure_count")] == [1, 1]
    assert [
        moved("OtelTestBatch", field)
        for field in ("request_count", "hit_count", "load_success_count", "load_failure_count")
    ] == [7, 1, 4, 2]

    # Storage errors: one failed read on the broken tier, by storage and operation.
    errors = values(points["cacheme.storage.errors"])
    assert errors == {
        (("cacheme.operation", operation), ("cacheme.storage", name)): count
        for name, storage in now.storages.items()
        for operation, count in storage.errors.items()
    }
    assert errors[(("cacheme.operation", "read"), ("cacheme.storage", BROKEN))] >= 1
    assert values(points["cacheme.storage.entries"])[(("cacheme.storage", STORAGE),)] == (
        now.storages[STORAGE].local_entries
    )
    breaker = values(points["cacheme.storage.breaker_state"])
    assert breaker[(("cacheme.state", "closed"), ("cacheme.storage", STORAGE))] == 1
    assert breaker[(("cacheme.state", "open"), ("cacheme.storage", STORAGE))] == 0
    assert values(points["cacheme.in_flight_keys"]) == {(): now.in_flight_keys}


@pytest.mark.usefixtures("storages")
async def test_the_load_duration_histogram_counts_every_load(
    telemetry: Telemetry, instrumented: cacheme_opentelemetry.Instrumentation
) -> None:
    before = cacheme.snapshot()
    await known_sequence()
    now = cacheme.snapshot()
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    (metric,) = [
        metric
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
        if metric.name == "cacheme.load.duration"
    ]
    assert metric.unit == "s"
    histograms: dict[tuple[str, str], HistogramDataPoint] = {}
    for point in metric.data.data_points:
        assert isinstance(point, HistogramDataPoint)
        attributes = point.attributes or {}
        histograms[(str(attributes["cacheme.node"]), str(attributes["cacheme.outcome"]))] = point
        assert sum(point.bucket_counts) == point.count
        if ADVICE:
            assert tuple(point.explicit_bounds) == cacheme.LOAD_TIME_BUCKETS
    # A batch counts once per node it loaded, as cacheme's own histogram does.
    assert {key: point.count for key, point in histograms.items()} == {
        ("OtelTestUser", "success"): 3,
        ("OtelTestBroken", "failure"): 1,
        ("OtelTestBatch", "success"): 4,
        ("OtelTestBatch", "failure"): 2,
        ("OtelTestOverBroken", "success"): 1,
    }
    for name in NODES:
        count = sum(point.count for (node, _), point in histograms.items() if node == name)
        total = sum(point.sum for (node, _), point in histograms.items() if node == name)
        earlier = before.nodes.get(name)
        assert count == now.nodes[name].load_time.count - (earlier.load_time.count if earlier else 0)
        cacheme_total = now.nodes[name].load_time.sum - (earlier.load_time.sum if earlier else 0.0)
        # The hook times the load inside cacheme's own timing of it.
        assert 0 < total <= cacheme_total + 1e-9
    assert histograms[("OtelTestUser", "success")].sum >= 3 * LOAD_TIME * 0.9
    # The batch of 3 took LOAD_TIME once and counts it three times.
    assert histograms[("OtelTestBatch", "success")].sum >= 4 * LOAD_TIME * 0.9


@pytest.mark.usefixtures("storages")
async def test_one_span_per_load_with_the_keys_hash_never_the_key(
    telemetry: Telemetry, instrumented: cacheme_opentelemetry.Instrumentation
) -> None:
    await known_sequence()
    spans = load_spans(telemetry.exporter)
    nodes: list[cacheme.Node] = [OtelTestUser(user_id=user_id) for user_id in (1, 2, 3)]
    nodes += [OtelTestBroken(user_id=1), OtelTestOverBroken(number=5)]
    keys = [node.full_key() for node in nodes]
    batch_keys = [OtelTestBatch(item=item).full_key() for item in (1, 2, 3, 4, -1, -2)]
    # 3 user loads, 1 broken, 3 batches, 1 over the broken tier: the hits have none.
    assert len(spans) == 8
    assert all(span.kind == trace.SpanKind.INTERNAL for span in spans)
    single = {
        str((span.attributes or {})["cacheme.key_hash"]): span
        for span in spans
        if "cacheme.key_hash" in (span.attributes or {})
    }
    assert set(single) == {hashlib.sha256(key.encode()).hexdigest()[:16] for key in keys}
    assert set(single) == {cacheme_opentelemetry.key_hash(key) for key in keys}
    for span in spans:
        for text in attribute_texts(span):
            for key in keys + batch_keys:
                assert key not in text
            assert "user:" not in text and "item:" not in text

    user = single[cacheme_opentelemetry.key_hash(OtelTestUser(user_id=2).full_key())]
    assert dict(user.attributes or {}) == {
        "cacheme.node": "OtelTestUser",
        "cacheme.key_hash": cacheme_opentelemetry.key_hash(OtelTestUser(user_id=2).full_key()),
        "cacheme.outcome": "success",
    }
    assert user.status.status_code == StatusCode.UNSET
    assert user.end_time is not None and user.start_time is not None
    assert user.end_time - user.start_time >= LOAD_TIME * 0.9 * 1e9

    failed = single[cacheme_opentelemetry.key_hash(OtelTestBroken(user_id=1).full_key())]
    assert (failed.attributes or {})["cacheme.outcome"] == "failure"
    assert failed.status.status_code == StatusCode.ERROR
    (event,) = failed.events
    assert event.name == "exception"
    assert str((event.attributes or {})["exception.type"]).endswith("SourceDownError")  # qualified from 1.2x
    assert (event.attributes or {})["exception.message"] == "the source is down"

    batches = [span for span in spans if "cacheme.key_hash" not in (span.attributes or {})]
    assert sorted(
        (dict(span.attributes or {})["cacheme.batch_size"], dict(span.attributes or {})["cacheme.outcome"])
        for span in batches
    ) == [(1, "success"), (2, "failure"), (3, "success")]
    for span in batches:
        assert (span.attributes or {})["cacheme.node"] == "OtelTestBatch"
        failing = (span.attributes or {})["cacheme.outcome"] == "failure"
        assert span.status.status_code == (StatusCode.ERROR if failing else StatusCode.UNSET)


@pytest.mark.usefixtures("storages")
async def test_the_load_span_is_current_during_the_load(
    telemetry: Telemetry, instrumented: cacheme_opentelemetry.Instrumentation
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("otel-test")
    LOAD_TRACERS.append(tracer)
    with tracer.start_as_current_span("otel-test.request"):
        await cacheme.get(OtelTestUser(user_id=100))
    (request,) = [
        span for span in telemetry.exporter.get_finished_spans() if span.name == "otel-test.request"
    ]
    (query,) = [span for span in telemetry.exporter.get_finished_spans() if span.name == "otel-test.query"]
    (load,) = load_spans(telemetry.exporter)
    assert query.parent is not None and load.context is not None
    assert query.parent.span_id == load.context.span_id  # the load's own span is the load span's child
    assert query.context is not None and query.context.trace_id == load.context.trace_id
    assert load.parent is not None and request.context is not None
    assert load.parent.span_id == request.context.span_id  # and the load span the request's
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left current after the load


@pytest.mark.usefixtures("storages")
async def test_uninstrument_stops_everything(telemetry: Telemetry) -> None:
    instrumentation = cacheme_opentelemetry.instrument(
        telemetry.meter_provider, telemetry.tracer_provider, spans=True
    )
    assert (instrumentation.active, instrumentation.spans) == (True, True)
    await cacheme.get(OtelTestUser(user_id=200))
    points = collect(telemetry.reader)
    assert "OtelTestUser" in by_node(points["cacheme.requests"])
    (duration,) = points["cacheme.load.duration"]
    assert isinstance(duration, HistogramDataPoint) and duration.count == 1
    assert len(load_spans(telemetry.exporter)) == 1

    instrumentation.uninstrument()
    instrumentation.uninstrument()  # twice is nothing
    assert not instrumentation.active
    await cacheme.get(OtelTestUser(user_id=201))
    with pytest.raises(SourceDownError):
        await cacheme.get(OtelTestBroken(user_id=201))
    points = collect(telemetry.reader)
    # No observable instrument reports; the histogram (cumulative) still shows its one load, or
    # nothing (SDK 1.20 leaves out a histogram that recorded nothing since the last collection).
    assert set(points) <= {"cacheme.load.duration"}
    counts = [
        point.count
        for point in points.get("cacheme.load.duration", [])
        if isinstance(point, HistogramDataPoint)
    ]
    assert counts in ([1], [])
    assert len(load_spans(telemetry.exporter)) == 1

    # The same provider again: its instruments report again (OpenTelemetry keeps the first ones).
    again = cacheme_opentelemetry.instrument(telemetry.meter_provider)
    try:
        assert not again.spans
        await cacheme.get(OtelTestUser(user_id=202))
        points = collect(telemetry.reader)
        assert (
            by_node(points["cacheme.requests"])["OtelTestUser"] == cacheme.stats(OtelTestUser).request_count()
        )
        (duration,) = points["cacheme.load.duration"]
        assert isinstance(duration, HistogramDataPoint) and duration.count == 2
        assert len(load_spans(telemetry.exporter)) == 1  # spans=False
    finally:
        again.uninstrument()


class OtelTestGated(cacheme.Node):
    number: int

    def key(self) -> str:
        return f"gated:{self.number}"

    async def load(self) -> int:
        LOAD_STARTED.set()
        await LOAD_MAY_END.wait()
        return self.number

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage=STORAGE, ttl=None)]


LOAD_STARTED = asyncio.Event()
LOAD_MAY_END = asyncio.Event()


@pytest.mark.usefixtures("storages")
async def test_a_load_running_at_uninstrument_still_ends_its_span(telemetry: Telemetry) -> None:
    LOAD_STARTED.clear()
    LOAD_MAY_END.clear()
    instrumentation = cacheme_opentelemetry.instrument(
        telemetry.meter_provider, telemetry.tracer_provider, spans=True
    )
    try:
        request = asyncio.create_task(cacheme.get(OtelTestGated(number=1)))
        await asyncio.wait_for(LOAD_STARTED.wait(), 10)
    finally:
        instrumentation.uninstrument()
    LOAD_MAY_END.set()
    assert await request == 1
    (span,) = load_spans(telemetry.exporter)
    assert (span.attributes or {})["cacheme.outcome"] == "success"
    assert "cacheme.load.duration" not in collect(telemetry.reader)  # nothing recorded once off


def test_instrumenting_twice_is_an_error(telemetry: Telemetry) -> None:
    first = cacheme_opentelemetry.instrument(telemetry.meter_provider)
    try:
        with pytest.raises(cacheme_opentelemetry.AlreadyInstrumentedError, match="uninstrument"):
            cacheme_opentelemetry.instrument(telemetry.meter_provider)
        with pytest.raises(cacheme_opentelemetry.AlreadyInstrumentedError):
            cacheme_opentelemetry.instrument(MeterProvider(shutdown_on_exit=False))
        assert first.active
    finally:
        first.uninstrument()
    cacheme_opentelemetry.instrument(telemetry.meter_provider).uninstrument()


@pytest.mark.usefixtures("storages")
async def test_without_spans_no_span_is_made(telemetry: Telemetry) -> None:
    instrumentation = cacheme_opentelemetry.instrument(telemetry.meter_provider, telemetry.tracer_provider)
    try:
        await cacheme.get(OtelTestUser(user_id=300))
        assert telemetry.exporter.get_finished_spans() == ()
        (duration,) = collect(telemetry.reader)["cacheme.load.duration"]
        assert isinstance(duration, HistogramDataPoint) and duration.count == 1
    finally:
        instrumentation.uninstrument()


GLOBAL_PROVIDERS = """
import asyncio
import json

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import cacheme
import cacheme_opentelemetry

instrumentation = cacheme_opentelemetry.instrument(spans=True)  # before the providers are set


class Greeting(cacheme.Node):
    name: str

    def key(self) -> str:
        return f"greeting:{self.name}"

    async def load(self) -> str:
        return f"hello {self.name}"

    class Meta(cacheme.Node.Meta):
        caches = [cacheme.Cache(storage="local", ttl=None)]


reader = InMemoryMetricReader()
exporter = InMemorySpanExporter()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(tracer_provider)


async def main() -> None:
    await cacheme.register_storage("local", cacheme.Storage("local://lru", size=10))
    await cacheme.get(Greeting(name="a"))
    await cacheme.get(Greeting(name="a"))


asyncio.run(main())
every = [
    metric
    for resource in reader.get_metrics_data().resource_metrics
    for scope in resource.scope_metrics
    for metric in scope.metrics
]
hits = [point.value for metric in every if metric.name == "cacheme.hits" for point in metric.data.data_points]
spans = [span.name for span in exporter.get_finished_spans()]
print(json.dumps({"metrics": sorted(metric.name for metric in every), "hits": hits, "spans": spans}))
"""


def test_the_global_providers_by_default() -> None:
    """In a process of its own: a global provider can be set once only."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(GLOBAL_PROVIDERS)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "metrics": [
            "cacheme.hits",
            "cacheme.in_flight_keys",
            "cacheme.load.duration",
            "cacheme.loads",
            "cacheme.misses",
            "cacheme.requests",
            "cacheme.storage.breaker_state",
            "cacheme.storage.entries",
        ],
        "hits": [1],
        "spans": ["cacheme.load"],
    }


def test_the_key_hash() -> None:
    assert (
        cacheme_opentelemetry.key_hash("cacheme:user:1:info:v1")
        == (hashlib.sha256(b"cacheme:user:1:info:v1").hexdigest()[:16])
    )
    assert len(cacheme_opentelemetry.key_hash("")) == 16
