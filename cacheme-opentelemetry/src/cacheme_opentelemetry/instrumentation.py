"""``instrument()``: cacheme's counters as OpenTelemetry metrics, and a load hook for durations and spans.

The counters are observable instruments whose callbacks read ``cacheme.snapshot()`` when the
meter provider collects, so a request costs nothing more. OpenTelemetry has no observable
histogram, so the load durations are recorded as they happen, by a load hook
(``cacheme.add_load_hook``); the same hook makes the opt-in spans.

OpenTelemetry cannot take an instrument back, and a meter provider asked again for an
instrument of a name it has returns the first one, callbacks included. So the instruments
are made once per meter provider (``_Meters``), and ``uninstrument()`` only switches them
off: their callbacks observe nothing from then on, until ``instrument()`` switches them on
again.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from contextvars import Token
from types import TracebackType

from opentelemetry import context, metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.trace import Span, Status, StatusCode, Tracer, TracerProvider

import cacheme

__all__ = ["SCOPE", "VERSION", "AlreadyInstrumentedError", "Instrumentation", "instrument", "key_hash"]

VERSION = "1.0.0"
# The instrumentation scope of every instrument and span this package makes.
SCOPE = "cacheme_opentelemetry"

NODE = "cacheme.node"
OUTCOME = "cacheme.outcome"
STORAGE = "cacheme.storage"
OPERATION = "cacheme.operation"
STATE = "cacheme.state"
KEY_HASH = "cacheme.key_hash"
BATCH_SIZE = "cacheme.batch_size"
SUCCESS = "success"
FAILURE = "failure"
# The circuit breaker's states (cacheme.health); a state not listed here is reported too.
BREAKER_STATES = ("closed", "open", "half-open")


class AlreadyInstrumentedError(RuntimeError):
    """``instrument()`` was called while an earlier instrumentation is still on."""


def key_hash(key: str) -> str:
    """What a span shows of a key: the first 16 hex digits of its SHA-256 (never the key itself,
    which may hold personal data). Hash a key the same way to find its spans."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class _Meters:
    """The instruments made on one meter provider; their callbacks observe only while ``on``."""

    def __init__(self, meter: Meter) -> None:
        self.on = False
        meter.create_observable_counter(
            "cacheme.requests",
            [self._per_node("request_count")],
            unit="{request}",
            description="Lookups: one per get, one per node of a get_all",
        )
        meter.create_observable_counter(
            "cacheme.hits",
            [self._per_node("hit_count")],
            unit="{request}",
            description="Lookups answered from a cache tier",
        )
        meter.create_observable_counter(
            "cacheme.misses",
            [self._per_node("miss_count")],
            unit="{request}",
            description="Lookups no cache tier answered (loaded, or joined a load)",
        )
        meter.create_observable_counter(
            "cacheme.loads",
            [self._loads],
            unit="{load}",
            description="Nodes loaded from the source, by outcome",
        )
        meter.create_observable_counter(
            "cacheme.storage.errors",
            [self._storage_errors],
            unit="{error}",
            description="Keys whose storage operation failed, by storage and operation",
        )
        meter.create_observable_up_down_counter(
            "cacheme.in_flight_keys",
            [self._in_flight_keys],
            unit="{key}",
            description="Keys being fetched or written back, in every event loop of the process",
        )
        meter.create_observable_up_down_counter(
            "cacheme.storage.entries",
            [self._storage_entries],
            unit="{entry}",
            description="Entries held by each local (in-process) storage",
        )
        meter.create_observable_gauge(
            "cacheme.storage.breaker_state",
            [self._breaker_state],
            description="1 for the circuit breaker's current state (cacheme.state), 0 for the others",
        )
        self.load_duration = _duration_histogram(meter)

    def _per_node(self, count: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """The callback observing each node class's ``count`` (a NodeSnapshot field) while ``on``."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.on:
                return []
            nodes = cacheme.snapshot().nodes
            return [Observation(getattr(node, count), {NODE: name}) for name, node in nodes.items()]

        return observe

    def _loads(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.on:
            return []
        observations = []
        for name, node in cacheme.snapshot().nodes.items():
            observations.append(Observation(node.load_success_count, {NODE: name, OUTCOME: SUCCESS}))
            observations.append(Observation(node.load_failure_count, {NODE: name, OUTCOME: FAILURE}))
        return observations

    def _storage_errors(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.on:
            return []
        return [
            Observation(count, {STORAGE: name, OPERATION: operation})
            for name, storage in cacheme.snapshot().storages.items()
            for operation, count in sorted(storage.errors.items())
        ]

    def _in_flight_keys(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.on:
            return []
        return [Observation(cacheme.snapshot().in_flight_keys)]

    def _storage_entries(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.on:
            return []
        return [
            Observation(storage.local_entries, {STORAGE: name})
            for name, storage in cacheme.snapshot().storages.items()
            if storage.local_entries is not None
        ]

    def _breaker_state(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.on:
            return []
        observations = []
        for name, storage in cacheme.snapshot().storages.items():
            states = (
                BREAKER_STATES
                if storage.breaker_state in BREAKER_STATES
                else (*BREAKER_STATES, storage.breaker_state)
            )
            for state in states:
                observations.append(
                    Observation(int(state == storage.breaker_state), {STORAGE: name, STATE: state})
                )
        return observations


def _duration_histogram(meter: Meter) -> Histogram:
    name, unit, description = (
        "cacheme.load.duration",
        "s",
        "How long source loads took (a batch's time once per node)",
    )
    try:
        return meter.create_histogram(
            name, unit, description, explicit_bucket_boundaries_advisory=list(cacheme.LOAD_TIME_BUCKETS)
        )
    except TypeError:  # opentelemetry-api before 1.30 takes no bucket advice
        return meter.create_histogram(name, unit, description)


_lock = threading.Lock()
_active: Instrumentation | None = None
# One _Meters per meter provider, for the provider's life (see the module's docstring).
_meters: weakref.WeakKeyDictionary[MeterProvider, _Meters] = weakref.WeakKeyDictionary()
_meters_kept: dict[int, tuple[MeterProvider, _Meters]] = {}  # for providers that take no weak reference


def _meters_of(provider: MeterProvider) -> _Meters:
    try:
        found = _meters.get(provider)
    except TypeError:
        kept = _meters_kept.get(id(provider))
        found = kept[1] if kept is not None else None
    if found is None:
        found = _Meters(provider.get_meter(SCOPE, VERSION))
        try:
            _meters[provider] = found
        except TypeError:
            _meters_kept[id(provider)] = (provider, found)
    return found


class Instrumentation:
    """What ``instrument()`` switched on; ``uninstrument()`` switches it off."""

    def __init__(self, meters: _Meters, tracer: Tracer | None) -> None:
        self._meters = meters
        self._tracer = tracer
        self._remove_hook: Callable[[], None] | None = None

    @property
    def spans(self) -> bool:
        """Whether each source load gets a span."""
        return self._tracer is not None

    @property
    def active(self) -> bool:
        """True until ``uninstrument()``."""
        return self._remove_hook is not None

    def uninstrument(self) -> None:
        """Stop observing: the metrics report nothing more, no load is timed or traced from now on
        (a load already running still ends its span). ``instrument()`` may then be called again.
        Calling it twice does nothing."""
        global _active
        with _lock:
            if self._remove_hook is None:
                return
            self._remove_hook()
            self._remove_hook = None
            self._meters.on = False
            if _active is self:
                _active = None

    def _hook(self, info: cacheme.LoadInfo) -> _LoadScope:
        return _LoadScope(self, info)

    def __repr__(self) -> str:
        state = "active" if self.active else "uninstrumented"
        return f"<cacheme_opentelemetry.Instrumentation {state}, spans={self.spans}>"


class _LoadScope:
    """One source load, seen by the hook: its duration, and its span if spans are on."""

    __slots__ = ("_current", "_info", "_instrumentation", "_started")

    def __init__(self, instrumentation: Instrumentation, info: cacheme.LoadInfo) -> None:
        self._instrumentation = instrumentation
        self._info = info
        self._current: tuple[Span, Token[Context]] | None = None  # the span, and the token to detach it
        self._started = 0.0

    def __enter__(self) -> None:
        tracer = self._instrumentation._tracer
        if tracer is not None:
            info = self._info
            attributes: dict[str, str | int] = {NODE: info.node}
            if info.key is not None:
                attributes[KEY_HASH] = key_hash(info.key)
            else:
                attributes[BATCH_SIZE] = info.size
            span = tracer.start_span("cacheme.load", attributes=attributes)
            # Current during the load: the spans the load makes (its database's, say) are its children.
            self._current = (span, context.attach(trace.set_span_in_context(span)))
        self._started = time.perf_counter()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        elapsed = time.perf_counter() - self._started
        outcome = SUCCESS if error is None else FAILURE
        if self._current is not None:
            span, token = self._current
            try:
                span.set_attribute(OUTCOME, outcome)
                if error is not None:
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            finally:
                context.detach(token)
                span.end()
        meters = self._instrumentation._meters
        if meters.on:
            # As cacheme's own histogram counts it: a batch's time once for each node it loaded.
            attributes = {NODE: self._info.node, OUTCOME: outcome}
            for _ in range(self._info.size):
                meters.load_duration.record(elapsed, attributes)


def instrument(
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    spans: bool = False,
) -> Instrumentation:
    """Report cacheme's metrics through ``meter_provider`` and, with ``spans=True``, a span per
    source load through ``tracer_provider`` (each the global provider when None; the tracer
    provider is not used without ``spans``).

    One instrumentation at a time: calling this again before ``uninstrument()`` raises
    ``AlreadyInstrumentedError`` (two would count every load twice).
    """
    global _active
    with _lock:
        if _active is not None:
            raise AlreadyInstrumentedError(
                f"cacheme is already instrumented ({_active!r}): call uninstrument() on the object "
                "the first instrument() returned before instrumenting again"
            )
        meters = _meters_of(meter_provider if meter_provider is not None else metrics.get_meter_provider())
        tracer = trace.get_tracer(SCOPE, VERSION, tracer_provider) if spans else None
        instrumentation = Instrumentation(meters, tracer)
        meters.on = True
        instrumentation._remove_hook = cacheme.add_load_hook(instrumentation._hook)
        _active = instrumentation
        return instrumentation
