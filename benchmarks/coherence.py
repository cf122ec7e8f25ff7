"""The invalidation bus across processes (issue 14): how fast, how complete, and what it costs a hit.

    python benchmarks/coherence.py                  # every backend with a bus, 1 round
    python benchmarks/coherence.py --rounds 3
    python benchmarks/coherence.py --only redis --keys 2000 --no-write

Two processes, A (the invalidator) and B (the holder), each a child of this driver with its own
event loop (``python benchmarks/coherence.py --child SPEC``), each with the chain
[local (``local://tlfu``, size 100,000, ``bus="coherence-shared"``), shared], the shared storage
being a private redis-server on loopback (``benchmarks/redis_server.py``), or the local PostgreSQL
(a table of this run's own, dropped at the end). B warms two sets of ``--keys`` keys (10,000 each)
into its local tier; in B only, the local storage's ``delete_sync`` is wrapped to record
``time.time()`` when the bus drops each key (and ``clear_sync`` to count emptyings: a lost
subscription empties the tier without naming keys). Before the phases, A invalidates one key of
neither set: the first use of its node class configures it and opens its connections (tens of
ms), timed apart and reported as "A's first invalidate", so that the phases measure a warm process.

1. **Propagation**: A invalidates the first set one key after another (``await
   cacheme.invalidate(node)`` each; ``--rate`` paces them instead), recording ``time.time()`` right
   before each call. Latency of a key = when B dropped it - when A began invalidating it (one
   machine, one clock). p50, p99, max; keys lost = keys B never dropped.
2. **Throughput**: A invalidates the second set as fast as it can: ``--batch`` (1,000) invalidations
   gathered at a time, one batch after the other. Invalidations/s = keys / time until A's last call
   returned; and the time until B had dropped every key, from A's start.
3. **Local hit**: in the driver, ``await cacheme.get(node)`` on one node held by the local tier,
   ``--hits`` (200,000) times, ns per hit; the local tier not bound to a bus, bound to the Redis
   bus, bound to the PostgreSQL bus (idle buses); ``--repeats`` (5) runs of each per round, the
   configurations alternating (rotated every run), and created in an order rotated every round
   (of identical configurations, the later created measured 1-3% faster here).

Each round runs the local-hit runs, then a fresh pair of processes per backend, the backends'
order alternating from round to round. A backend whose bus this cacheme does not have
(``cacheme.plugins.bus_schemes()``) is skipped, and the report says so.

Targets (issue 14):

- propagation p99 <= 10 ms on loopback, for each backend, in every round;
- 0 keys lost (propagation and throughput, every backend and round): every key dropped by the bus,
  none left in B's local tier, no subscription lost;
- the local hit with a bus within noise (+-5%) of the hit without: the median of every run of
  the bound configuration over the median of every run of the unbound one, between 0.95 and 1.05.

The report is written between markers into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import typing
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()  # the children run it too (``--child``)
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

import cacheme  # noqa: E402
import cacheme.plugins  # noqa: E402
from benchmarks.children import Child  # noqa: E402
from benchmarks.outage import write_report  # noqa: E402
from benchmarks.redis_server import RedisServer  # noqa: E402
from benchmarks.storm import check, listed, median_range, quantiles, whole  # noqa: E402
from cacheme import singleflight  # noqa: E402

BEGIN, END = "<!-- coherence:begin -->", "<!-- coherence:end -->"
# The local PostgreSQL of the test suite (tests/fixtures/sql_servers.py; not imported from there:
# that module imports aiomysql, which the bench session does not install).
POSTGRES_URL = os.environ.get("CACHEME_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("redis", "postgresql")
LABELS = {"redis": "Redis", "postgresql": "PostgreSQL"}
LOCAL_SIZE = 100_000
TTL = timedelta(minutes=10)  # nothing expires during a run
LOCAL_NAME, SHARED_NAME = "coherence-local", "coherence-shared"
TARGET_P99 = 0.010
HIT_TOLERANCE = 0.05
READY_TIMEOUT = 120.0  # a child's start: imports, subscription, warming 2 x --keys keys
PHASE_TIMEOUT = 300.0


def bus_backends() -> list[str]:
    """The backends of BACKENDS whose scheme has a bus in this cacheme."""
    schemes = cacheme.plugins.bus_schemes()
    return [backend for backend in BACKENDS if backend in schemes]


# ---------------------------------------------------------------- the children (A and B)


class Item(cacheme.Node):
    """One key of the benchmark; its value is its id (a load costs nothing)."""

    id: int

    def key(self) -> str:
        return f"item:{self.id}"

    async def load(self) -> int:
        return self.id

    @classmethod
    async def load_all(cls, nodes: Sequence[cacheme.Node[Any]]) -> list[int]:
        return [typing.cast(Item, node).id for node in nodes]

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(LOCAL_NAME, TTL), cacheme.Cache(SHARED_NAME, TTL)]


@dataclass
class DropRecorder:
    """When the bus dropped each key from a local storage (``time.time()``), and how often it emptied it.

    Installed on one storage object of a child process: the bus thread calls its
    ``delete_sync`` per key of a payload and its ``clear_sync`` when it empties it.
    """

    dropped_at: dict[str, float] = field(default_factory=dict)
    clears: int = 0

    def install(self, storage: cacheme.LocalStorage) -> None:
        delete, clear = storage.delete_sync, storage.clear_sync

        def delete_sync(key: str) -> None:
            delete(key)
            if key not in self.dropped_at:
                self.dropped_at[key] = time.time()

        def clear_sync() -> None:
            clear()
            self.clears += 1

        storage.delete_sync = delete_sync  # type: ignore[method-assign]
        storage.clear_sync = clear_sync  # type: ignore[method-assign]


def say(line: str) -> None:
    print(line, flush=True)


async def command() -> list[str]:
    """The driver's next command (a line of stdin, split); ``["exit"]`` at its end."""
    line = await asyncio.to_thread(sys.stdin.readline)
    return line.split() or ["exit"]


def phase_nodes(spec: dict[str, Any]) -> dict[str, list[Item]]:
    keys: int = spec["keys"]
    return {
        "propagation": [Item(id=i) for i in range(keys)],
        "throughput": [Item(id=i) for i in range(keys, 2 * keys)],
    }


def bus_counters() -> dict[str, Any]:
    return vars(cacheme.bus_health(SHARED_NAME))


async def holder(
    spec: dict[str, Any], local: cacheme.LocalStorage, shared: cacheme.BaseStorage, recorder: DropRecorder
) -> None:
    """B: warm both sets, say ``ready {held per set}``; ``counters``: the bus's, one JSON line;
    ``collect PHASE SECONDS``: wait (at most SECONDS) until the bus dropped every key of PHASE,
    then one JSON line with the drop times and how many of PHASE's keys each tier still holds."""
    sets = phase_nodes(spec)
    held: dict[str, int] = {}
    for phase, nodes in sets.items():
        await cacheme.get_all(nodes)
        held[phase] = sum(1 for node in nodes if local.get_sync(node.full_key()) is not cacheme.MISSING)
    clears_at_ready = recorder.clears
    say(f"ready {json.dumps(held)}")
    while (words := await command())[0] != "exit":
        if words[0] == "counters":
            say(json.dumps(bus_counters()))
            continue
        phase, seconds = words[1], float(words[2])
        keys = [node.full_key() for node in sets[phase]]
        deadline = time.monotonic() + seconds
        dropped = recorder.dropped_at
        while time.monotonic() < deadline and not all(key in dropped for key in keys):  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # the bus thread records; nothing here to wait on
        left = sum(1 for key in keys if local.get_sync(key) is not cacheme.MISSING)
        # What an invalidate failed to delete from the shared tier: B's next get would read it back.
        left_shared = len(await shared.get_many(keys))
        outcome = {
            "dropped_at": [dropped.get(key) for key in keys],
            "left": left,
            "left_shared": left_shared,
            "clears": recorder.clears - clears_at_ready,
            # Keys of other processes on the same channel (PostgreSQL: one per database).
            "foreign": sum(1 for key in list(dropped) if not key.startswith(f"{spec['prefix']}:")),
            "bus": bus_counters(),
        }
        say(json.dumps(outcome))


async def invalidator(spec: dict[str, Any]) -> None:
    """A: invalidate a key of neither set (the first use), say ``ready {its seconds}``;
    ``propagation RATE``: invalidate the first set one after another (RATE > 0: paced at RATE a
    second), ``throughput BATCH``: the second set, BATCH gathered at a time; each answered with
    one JSON line."""
    sets = phase_nodes(spec)
    # The first use of the node class configures it (and opens the shared storage's connections):
    # done on a key of neither set, timed apart, so that the phases measure a warm process.
    first = time.perf_counter()
    await cacheme.invalidate(Item(id=2 * spec["keys"]))
    say(f"ready {time.perf_counter() - first}")
    while (words := await command())[0] != "exit":
        nodes = sets[words[0]]
        before = bus_counters()
        health_before = cacheme.storage_health(SHARED_NAME)
        if words[0] == "propagation":
            rate = float(words[1])
            started: list[float] = []
            returned: list[float] = []
            begun = time.monotonic()
            for index, node in enumerate(nodes):
                if rate > 0:
                    delay = begun + index / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                started.append(time.time())
                await cacheme.invalidate(node)
                returned.append(time.time())
            outcome: dict[str, Any] = {"started": started, "returned": returned}
        else:
            batch = int(words[1])
            first = time.time()
            for offset in range(0, len(nodes), batch):
                await asyncio.gather(*(cacheme.invalidate(node) for node in nodes[offset : offset + batch]))
            outcome = {"started": first, "finished": time.time()}
        after = bus_counters()
        health = cacheme.storage_health(SHARED_NAME)
        # The shared tier's deletes that failed (deadline passed, error): logged, counted, not raised.
        outcome["shared_failures"] = health.failure_count - health_before.failure_count
        outcome["breaker_opened"] = health.opened_count - health_before.opened_count
        outcome["announced"] = after["announced_count"] - before["announced_count"]
        outcome["announce_failures"] = after["announce_failures"] - before["announce_failures"]
        outcome["bus"] = after
        say(json.dumps(outcome))


async def child(spec: dict[str, Any]) -> None:
    """One process of the pair: [local (on the shared storage's bus), shared], then its role."""
    recorder = DropRecorder()
    shared = cacheme.Storage(spec["shared_url"], **spec["shared_options"])
    await cacheme.register_storage(SHARED_NAME, shared)
    local = cacheme.Storage("local://tlfu", size=LOCAL_SIZE, bus=SHARED_NAME)
    assert isinstance(local, cacheme.LocalStorage)
    if spec["role"] == "holder":
        recorder.install(local)
    await cacheme.register_storage(LOCAL_NAME, local)
    cacheme.set_prefix(spec["prefix"])
    try:
        if spec["role"] == "holder":
            await holder(spec, local, shared, recorder)
        else:
            await invalidator(spec)
    finally:
        await cacheme.unregister_storage(LOCAL_NAME)
        await cacheme.unregister_storage(SHARED_NAME)


# ---------------------------------------------------------------- the driver's side of a child


async def start_child(spec: dict[str, Any], workdir: Path) -> Child:
    log = workdir / f"{spec['prefix']}-{spec['role']}.stderr"
    return await Child.start(spec["role"], SCRIPT, spec, log, cwd=ROOT)


# ---------------------------------------------------------------- propagation and throughput


@dataclass(frozen=True)
class Shared:
    """Where a backend's shared storage is, as the children build it."""

    backend: str
    url: str
    options: dict[str, Any]


@dataclass
class PairResult:
    backend: str
    round: int
    held: dict[str, int]  # keys of each set in B's local tier after warming
    first_call: float  # A's first invalidate (the node class's first use), before the phases
    # propagation: one invalidation after another
    serial_rate: float  # invalidations/s A achieved
    call: list[float]  # A's invalidate calls: p50, p99 (seconds)
    latency: list[float]  # B's drop - A's start: p50, p99, max (seconds)
    lost: int  # keys B never dropped
    left: int  # keys still in B's local tier after the wait
    left_shared: int  # keys still in the shared tier after the phase (an invalidate's delete failed)
    shared_failures: int  # A: operations on the shared storage that failed (deadline passed, error)
    breaker_opened: int  # A: times the shared storage's breaker opened
    # throughput: batches gathered
    burst_rate: float  # invalidations/s, to A's last call returning
    burst_done: float  # A: seconds from start to the last call returning
    burst_all_dropped: float  # B: seconds from A's start to the last key dropped (NaN when keys were lost)
    burst_lost: int
    burst_left: int
    burst_left_shared: int
    burst_shared_failures: int
    burst_breaker_opened: int
    payloads: dict[str, int]  # payloads B received, per phase
    announce_failures: int  # A, both phases
    clears: int  # B's local tier emptied after warming (a lost subscription)
    subscriptions_lost: int  # lost_count of A and B together
    foreign: int  # keys of other processes (not of this run's prefix) that B's bus dropped
    stderr: list[str]


def nan_max(values: Sequence[float | None]) -> float:
    present = [v for v in values if v is not None]
    return max(present) if present and len(present) == len(values) else math.nan


async def run_pair(shared: Shared, round_number: int, workdir: Path, args: argparse.Namespace) -> PairResult:
    prefix = f"coh-{shared.backend}-{round_number}-{uuid.uuid4().hex[:8]}"
    base = {"shared_url": shared.url, "shared_options": shared.options, "prefix": prefix, "keys": args.keys}
    b = await start_child({**base, "role": "holder"}, workdir)
    a = await start_child({**base, "role": "invalidator"}, workdir)
    try:
        held: dict[str, int] = json.loads(await b.ready(READY_TIMEOUT))
        first_call = float(await a.ready(READY_TIMEOUT))
        baseline = await b.ask("counters", READY_TIMEOUT)
        if min(held.values()) != args.keys:
            raise RuntimeError(f"B holds {held} keys after warming, not {args.keys} of each set")

        serial = await a.ask(f"propagation {args.rate}", PHASE_TIMEOUT)
        seen = await b.ask(f"collect propagation {args.drain_timeout}", PHASE_TIMEOUT)
        starts: list[float] = serial["started"]
        drops: list[float | None] = seen["dropped_at"]
        latencies = [drop - start for start, drop in zip(starts, drops, strict=True) if drop is not None]
        calls = [end - start for start, end in zip(starts, serial["returned"], strict=True)]

        burst = await a.ask(f"throughput {args.batch}", PHASE_TIMEOUT)
        burst_seen = await b.ask(f"collect throughput {args.drain_timeout}", PHASE_TIMEOUT)
        burst_drops: list[float | None] = burst_seen["dropped_at"]
        last_drop = nan_max(burst_drops)
        done = burst["finished"] - burst["started"]
        received = [
            seen["bus"]["received_count"] - baseline["received_count"],
            burst_seen["bus"]["received_count"] - seen["bus"]["received_count"],
        ]
    except BaseException:
        a.kill()
        b.kill()
        raise
    stderr = [f"A: {line}" for line in await a.finish(30, say_exit=True)]
    stderr += [f"B: {line}" for line in await b.finish(30, say_exit=True)]
    return PairResult(
        backend=shared.backend,
        round=round_number,
        held=held,
        first_call=first_call,
        serial_rate=len(starts) / (serial["returned"][-1] - starts[0]),
        call=quantiles(calls, (0.5, 0.99)),
        latency=quantiles(latencies, (0.5, 0.99, 1.0)),
        lost=sum(1 for drop in drops if drop is None),
        left=seen["left"],
        left_shared=seen["left_shared"],
        shared_failures=serial["shared_failures"],
        breaker_opened=serial["breaker_opened"],
        burst_rate=args.keys / done,
        burst_done=done,
        burst_all_dropped=last_drop - burst["started"],
        burst_lost=sum(1 for drop in burst_drops if drop is None),
        burst_left=burst_seen["left"],
        burst_left_shared=burst_seen["left_shared"],
        burst_shared_failures=burst["shared_failures"],
        burst_breaker_opened=burst["breaker_opened"],
        payloads={"propagation": received[0], "throughput": received[1]},
        announce_failures=serial["announce_failures"] + burst["announce_failures"],
        clears=burst_seen["clears"],
        subscriptions_lost=burst["bus"]["lost_count"] + burst_seen["bus"]["lost_count"],
        foreign=burst_seen["foreign"],
        stderr=stderr,
    )


# ---------------------------------------------------------------- the local hit


def hit_node_class(local: str, shared: str) -> type[cacheme.Node]:
    """A node class of its own for one configuration: [local, shared]; every one has the same key."""
    meta: type[cacheme.Node.Meta] = type(
        "Meta",
        (cacheme.Node.Meta,),
        {"version": "v1", "caches": [cacheme.Cache(local, TTL), cacheme.Cache(shared, TTL)]},
    )

    class HitNode(cacheme.Node):
        Meta = meta

        def key(self) -> str:
            return "hit"

        async def load(self) -> int:
            return 1

    return HitNode


async def write_backs_done(seconds: float = 10.0) -> None:
    """Wait until the engine has nothing in flight in this loop (the write-back of a first get).

    A local hit never suspends, so a timed loop of hits would starve it (and its storage's
    write timeout would expire meanwhile).
    """
    deadline = time.monotonic() + seconds
    while singleflight.in_flight_count() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # the engine offers nothing to wait on
    if singleflight.in_flight_count():
        raise RuntimeError(f"a write-back is still running after {seconds:g} s")


async def ns_per_hit(node: cacheme.Node, number: int) -> float:
    gc.collect()
    started = time.perf_counter_ns()
    for _ in range(number):
        await cacheme.get(node)
    return (time.perf_counter_ns() - started) / number


HIT_CONFIGURATIONS = {
    "not bound": "local tier not bound to a bus",
    "redis": "bound to the Redis bus",
    "postgresql": "bound to the PostgreSQL bus",
}


async def local_hits(
    shareds: list[Shared], round_number: int, args: argparse.Namespace
) -> dict[str, list[float]]:
    """ns per local hit, ``--repeats`` runs per configuration, alternating: {configuration: runs}.

    The configurations are also created in an order that rotates with ``round_number``: of
    identical configurations, the ones created later measured 1-3% faster here (two unbound
    tiers side by side: 0.97-0.99), which would otherwise always favour the bound ones.
    """
    tag = uuid.uuid4().hex[:8]
    locals_: list[str] = []
    shared_names: dict[str, str] = {}  # backend -> registered name
    nodes: dict[str, cacheme.Node] = {}
    try:
        for shared in shareds:
            shared_name = shared_names[shared.backend] = f"hit-shared-{shared.backend}-{tag}"
            await cacheme.register_storage(shared_name, cacheme.Storage(shared.url, **shared.options))
        # (configuration, its shared tier, the bus it listens on)
        plans = [("not bound", shared_names[shareds[0].backend], None)] + [
            (backend, name, name) for backend, name in shared_names.items()
        ]
        turn = (round_number - 1) % len(plans)
        for configuration, shared_name, bus in plans[turn:] + plans[:turn]:
            local_name = f"hit-local-{configuration.replace(' ', '-')}-{tag}"
            storage = cacheme.Storage("local://tlfu", size=LOCAL_SIZE, bus=bus)
            assert isinstance(storage, cacheme.LocalStorage)
            await cacheme.register_storage(local_name, storage)
            locals_.append(local_name)
            node = hit_node_class(local_name, shared_name)()
            await cacheme.get(node)
            await write_backs_done()
            if storage.get_sync(node.full_key()) is cacheme.MISSING:
                raise RuntimeError(f"{configuration}: the local tier does not hold the node after a get")
            nodes[configuration] = node
        names = list(nodes)
        runs: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(args.repeats):
            turn = repeat % len(names)
            for name in names[turn:] + names[:turn]:
                runs[name].append(await ns_per_hit(nodes[name], args.hits))
        return runs
    finally:
        for name in locals_ + list(shared_names.values()):
            await cacheme.unregister_storage(name)


# ---------------------------------------------------------------- the report


def ms2(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.2f}"


def ns(value: float) -> str:
    return f"{value:,.0f}"


def ratio(value: float) -> str:
    return f"{value:.3f}"


def hit_ratios(hits: list[dict[str, list[float]]], name: str) -> tuple[float, list[float]]:
    """``name``'s median ns per hit over the unbound one's, every run pooled, and per round."""
    pooled = statistics.median(v for r in hits for v in r[name]) / statistics.median(
        v for r in hits for v in r["not bound"]
    )
    per_round = [statistics.median(r[name]) / statistics.median(r["not bound"]) for r in hits if name in r]
    return pooled, per_round


def targets(results: list[PairResult], hits: list[dict[str, list[float]]], skipped: list[str]) -> list[str]:
    rows = ["| Target | Result | Figures (every round) |", "|---|---|---|"]
    for backend in BACKENDS:
        label = LABELS[backend]
        runs = [r for r in results if r.backend == backend]
        if not runs:
            why = "no bus for this scheme in this cacheme" if backend in skipped else "not selected"
            rows.append(f"| {label}: propagation p99 <= {TARGET_P99 * 1000:g} ms | not run | {why} |")
            continue
        p99s = [r.latency[1] for r in runs]
        rows.append(
            check(
                f"{label}: propagation p99 <= {TARGET_P99 * 1000:g} ms",
                all(p <= TARGET_P99 for p in p99s),
                f"{listed(p99s, ms2)} ms",
            )
        )
    if results:
        lost = [r.lost + r.left + r.burst_lost + r.burst_left for r in results]
        losses = [r.subscriptions_lost + r.clears for r in results]
        failures = [r.announce_failures for r in results]
        per_run = ", ".join(
            f"{LABELS[r.backend]} {r.lost}/{r.left}/{r.burst_lost}/{r.burst_left}" for r in results
        )
        rows.append(
            check(
                "0 keys lost (never dropped, or still held), no subscription lost, no failed announcement",
                max(lost) == 0 and max(losses) == 0 and max(failures) == 0,
                f"lost/left, propagation then throughput: {per_run}; subscriptions lost or tier emptied: "
                f"{listed(losses, whole)}; announcements failed: {listed(failures, whole)}",
            )
        )
    if results:
        shared_left = [r.left_shared + r.burst_left_shared for r in results]
        per_run = ", ".join(
            f"{LABELS[r.backend]} {r.left_shared}/{r.burst_left_shared} "
            f"({r.shared_failures}/{r.burst_shared_failures} failures)"
            for r in results
        )
        rows.append(
            check(
                "(our check) 0 keys left in the shared tier once every invalidate returned",
                max(shared_left) == 0,
                f"left, propagation/throughput (A's shared-tier failures): {per_run}",
            )
        )
    for name in [n for n in HIT_CONFIGURATIONS if n != "not bound"]:
        if not hits or name not in hits[0]:
            continue
        pooled, per_round = hit_ratios(hits, name)
        rows.append(
            check(
                f"local hit {HIT_CONFIGURATIONS[name]} within ±{HIT_TOLERANCE:.0%} of not bound",
                abs(pooled - 1) <= HIT_TOLERANCE,
                f"ratio {ratio(pooled)} (medians of every run); per round {listed(per_round, ratio)}",
            )
        )
    return rows


def report(
    results: list[PairResult],
    hits: list[dict[str, list[float]]],
    skipped: list[str],
    args: argparse.Namespace,
    wall_seconds: float,
) -> str:
    pacing = f"paced at {args.rate:,.0f}/s" if args.rate > 0 else "each awaited before the next"
    setup = (
        f"{args.rounds} round(s); the invocation took {wall_seconds:.0f} s. Two processes (A invalidates, "
        f"B holds), each [local://tlfu size {LOCAL_SIZE:,} on the bus, shared], a fresh pair per backend "
        f"and round, the backends' order alternating; Redis: a private redis-server on loopback; "
        f"PostgreSQL: the local server, a table of this run's own. B warms 2 x {args.keys:,} keys; A "
        f"invalidates one other key first (its first use of the node class: configures it, connects; "
        f"timed apart, not counted). "
        f"Propagation: A invalidates {args.keys:,} keys one after another ({pacing}); latency = when "
        f"B's bus dropped the key (its local storage's `delete_sync`, wrapped in B) - `time.time()` "
        f"right before A's `invalidate` (one clock). Throughput: {args.keys:,} keys, {args.batch:,} "
        f"`invalidate` calls gathered at a time. Local hit: `await cacheme.get(node)` on one node held "
        f"by the local tier, {args.hits:,} times, ns per hit, {args.repeats} runs per configuration "
        f"and round, alternating, created in an order rotated every round (the buses idle). Median "
        f"over the rounds (range); times in ms. "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}."
    )
    lines = [
        BEGIN,
        "## Coherence: the invalidation bus across processes (`benchmarks/coherence.py`)",
        "",
        setup,
        "",
    ]
    if skipped:
        offered = ", ".join(sorted(cacheme.plugins.bus_schemes())) or "none"
        names = ", ".join(LABELS[b] for b in skipped)
        lines += [f"Not run: {names} (no bus for its scheme in this cacheme; buses: {offered}).", ""]
    backends = [b for b in BACKENDS if any(r.backend == b for r in results)]
    lines += [
        f"Propagation: {args.keys:,} keys invalidated one after another. Payloads: messages B's bus "
        "received; left: keys still held after the phase, by B's local tier and by the shared tier "
        "(whose delete failed); shared-tier failures and breaker openings: A's "
        "(`cacheme.storage_health`), during the phase.",
        "",
        "| backend | A's first invalidate | invalidations/s | invalidate call p50 | p99 | propagation p50 "
        "| p99 | max | keys lost | payloads | left in B | left in shared | shared-tier failures "
        "| breaker opened |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in backends:
        runs = [r for r in results if r.backend == backend]
        cells = [
            LABELS[backend],
            median_range([r.first_call for r in runs], ms2),
            median_range([r.serial_rate for r in runs], whole),
            *(median_range([r.call[i] for r in runs], ms2) for i in range(2)),
            *(median_range([r.latency[i] for r in runs], ms2) for i in range(3)),
            median_range([r.lost for r in runs], whole),
            median_range([r.payloads["propagation"] for r in runs], whole),
            median_range([r.left for r in runs], whole),
            median_range([r.left_shared for r in runs], whole),
            median_range([r.shared_failures for r in runs], whole),
            median_range([r.breaker_opened for r in runs], whole),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Throughput: {args.keys:,} keys, {args.batch:,} `invalidate` calls gathered at a time; times "
        "from A's start.",
        "",
        "| backend | invalidations/s | A done after | B dropped all after | keys lost | payloads "
        "| left in B | left in shared | shared-tier failures | breaker opened |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in backends:
        runs = [r for r in results if r.backend == backend]
        cells = [
            LABELS[backend],
            median_range([r.burst_rate for r in runs], whole),
            median_range([r.burst_done for r in runs], ms2),
            median_range([r.burst_all_dropped for r in runs], ms2),
            median_range([r.burst_lost for r in runs], whole),
            median_range([r.payloads["throughput"] for r in runs], whole),
            median_range([r.burst_left for r in runs], whole),
            median_range([r.burst_left_shared for r in runs], whole),
            median_range([r.burst_shared_failures for r in runs], whole),
            median_range([r.burst_breaker_opened for r in runs], whole),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if hits:
        lines += ["", "Local hit (ns per `await cacheme.get(node)`):", ""]
        lines += ["| local tier | ns per hit | ratio to not bound |", "|---|---:|---:|"]
        for name, label in HIT_CONFIGURATIONS.items():
            if name not in hits[0]:
                continue
            per_round = [statistics.median(r[name]) for r in hits]
            shown = "1" if name == "not bound" else ratio(hit_ratios(hits, name)[0])
            lines.append(f"| {label} | {median_range(per_round, ns)} | {shown} |")
    foreign = {LABELS[r.backend]: 0 for r in results}
    for r in results:
        foreign[LABELS[r.backend]] += r.foreign
    if any(foreign.values()):
        shown = ", ".join(f"{name} {count:,}" for name, count in foreign.items())
        lines += [
            "",
            f"Other processes used the same bus channel meanwhile (keys of theirs that B dropped, every "
            f"round together: {shown}); their messages are in B's payload counts.",
        ]
    logged = [line for r in results for line in r.stderr]
    if logged:
        lines += ["", f"The children logged {len(logged)} line(s) to stderr; the first: `{logged[0][:200]}`."]
    lines += ["", "Targets (issue 14):", "", *targets(results, hits, skipped), END]
    return "\n".join(lines)


# ---------------------------------------------------------------- the driver


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=10_000, help="keys per phase")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="propagation: invalidations/s (0: back to back)"
    )
    parser.add_argument(
        "--batch", type=int, default=1_000, help="throughput: invalidations gathered at a time"
    )
    parser.add_argument("--drain-timeout", type=float, default=5.0, help="seconds B waits for the last drops")
    parser.add_argument("--hits", type=int, default=200_000, help="local hits per run")
    parser.add_argument("--repeats", type=int, default=5, help="local-hit runs per configuration and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=BACKENDS, action="append", default=None, help="this backend only")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave RESULTS.md alone")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keys < 1 or args.batch < 1 or args.hits < 1 or args.repeats < 1 or args.rounds < 1:
        parser.error("--keys, --batch, --hits, --repeats and --rounds must be at least 1")
    if 2 * args.keys > LOCAL_SIZE:
        parser.error(f"--keys: B's local tier holds {LOCAL_SIZE:,} keys, both sets must fit")
    return args


async def drop_table(table: str) -> None:
    import asyncpg  # only when PostgreSQL runs

    connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await connection.close()


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child is not None:
        await child(json.loads(args.child))
        return
    begun = time.perf_counter()
    chosen = [b for b in BACKENDS if args.only is None or b in args.only]
    available = bus_backends()
    backends = [b for b in chosen if b in available]
    skipped = [b for b in chosen if b not in available]
    for backend in skipped:
        print(f"{LABELS[backend]}: not run (no {backend} bus in this cacheme)", flush=True)
    if not backends:
        raise SystemExit("nothing to run: no selected backend has a bus in this cacheme")
    table = f"coherence_{uuid.uuid4().hex[:12]}"
    results: list[PairResult] = []
    hits: list[dict[str, list[float]]] = []
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        server = RedisServer(workdir)
        shareds = {
            "redis": Shared("redis", f"redis://127.0.0.1:{server.port}/0", {}),
            "postgresql": Shared("postgresql", POSTGRES_URL, {"table": table}),
        }
        try:
            for round_number in range(1, args.rounds + 1):
                print(f"round {round_number}: local hits ...", flush=True)
                hits.append(await local_hits([shareds[b] for b in backends], round_number, args))
                turn = (round_number - 1) % max(1, len(backends))
                for backend in backends[turn:] + backends[:turn]:
                    print(f"round {round_number}: {LABELS[backend]} ...", flush=True)
                    server.admin.command("FLUSHALL")
                    result = await run_pair(shareds[backend], round_number, workdir, args)
                    for line in result.stderr:
                        print(f"  {line}", flush=True)
                    results.append(result)
        finally:
            server.stop()
            if "postgresql" in backends:
                await drop_table(table)
    text = report(results, hits, skipped, args, time.perf_counter() - begun)
    print(text)
    if not args.no_write:
        write_report(text, BEGIN, END)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
