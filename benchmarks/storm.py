"""A hot key at its expiry (issue 13, "never stall on expiry"): 500 clients on one key of [local, Redis].

    python benchmarks/storm.py                  # every configuration cacheme knows, 1 round
    python benchmarks/storm.py --rounds 3
    python benchmarks/storm.py --only before --rounds 1 --seconds 4

One hot key on a chain [local tier (``local://tlfu``), Redis (a private redis-server on loopback)],
both with a ttl of ``--ttl`` seconds (1 s). Its source sleeps ``--load-seconds`` (0.2 s) and returns
a ``Stamp``: the wall-clock time (``time.time()``) at which the value was made, and the number of
the load. ``--clients`` tasks (500) each wait ``--think`` seconds on average (5 ms, exponential),
then ``await cacheme.get(node)``, for a warm-up of ``--warmup`` seconds (2 s, not counted) and a
measured run of ``--seconds`` (10 s). Per request: its latency (whether it returned or raised) and,
when it returned, the age of the value served (``time.time()`` minus the stamp).

Configurations, alternating within each round (a new node class, new storage registrations and an
empty Redis for each run):

- **before**: a plain node (cacheme before issue 13: at every expiry every client waits for the load);
- **refresh_after**: ``Meta.refresh_after = --refresh-after`` (0.8 s, 80% of the ttl);
- **early_refresh**: ``Meta.early_refresh = --beta`` (XFetch's beta, 1.0);
- **stale_if_error**: ``refresh_after`` as above and ``Meta.stale_if_error = --stale-window`` (5 s),
  while the source fails (raises after its 0.2 s) for every load it starts from ``--fail-at`` (4 s)
  to ``--fail-at + --fail-seconds`` (7 s) of the measured run;
- **before, source failing**: the plain node with the same failure (its callers get the errors).

The *failure period* of a failing run runs from ``--fail-at`` until the first load started after
the failure returns. Requests that started or ended in it are reported apart: a value older than
the ttl may be served there (stale_if_error's stale values, at most ttl + stale window old).

Printed per configuration, median over the rounds with the range: requests/s; p50, p99, p99.9 and
max latency; requests that waited more than 10 ms; loads from the source that the measured run
started (successful, failed, per second, and the number expected from the refresh period); the
largest age of a value served outside the failure period, and inside it; caller errors (exceptions
raised to clients); cacheme's own counters (``cacheme.stats(NodeClass).as_dict()``, the ``*_count``
ones, over the measured run).

Targets (issue 13), each checked in every round:

- refresh_after (80% of the ttl): after the warm-up, 0 requests wait more than 10 ms;
- refresh_after: loads ≈ run time / refresh period: from run / (refresh_after + load time) minus 1
  to run / refresh_after plus 1 (9 to 13.5 loads in 10 s): run / 1.0 s when the 0.8 s count from
  the end of a load (the reload then takes its 0.2 s), run / 0.8 s when they count from its start;
- refresh_after: no value older than the ttl served (within ``AGE_TOLERANCE``, 1 ms: the source
  stamps a value as it returns it, cacheme stamps the entry where its ttl starts a moment later);
- stale_if_error, source failing for 3 s: 0 caller errors; and (a check of ours) no value older than
  the ttl outside the failure period, none older than ttl + stale window inside it.

A configuration whose ``Meta`` options this cacheme does not know yet (``cacheme.node.META_OPTIONS``)
is skipped, and the report says so. The report is written between markers into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cacheme  # noqa: E402
import cacheme.node  # noqa: E402
from benchmarks.outage import ms, write_report  # noqa: E402
from benchmarks.redis_server import RedisServer  # noqa: E402

BEGIN, END = "<!-- storm:begin -->", "<!-- storm:end -->"
SLOW_SECONDS = 0.010  # a request that took longer than this waited
# The source stamps a value as it returns it, cacheme stamps the entry (where its ttl starts) a
# moment later: a value served this much past the ttl is not counted as older than the ttl.
AGE_TOLERANCE = 0.001
# A refresh that the run started only to settle after it: waited for before the storages go.
SETTLE_SECONDS = 0.5


class SourceDownError(Exception):
    """What the source raises while it fails."""


@dataclass
class Stamp:
    """The hot key's value: when it was made (wall clock) and by which load."""

    loaded_at: float
    load: int


@dataclass
class Load:
    started: float  # time.perf_counter()
    finished: float
    ok: bool


@dataclass
class Source:
    """The hot key's source: sleeps ``seconds``, then returns a Stamp, or raises in the failure window."""

    seconds: float
    fail_from: float = math.inf  # perf_counter times; a load started in [fail_from, fail_until) fails
    fail_until: float = math.inf
    recovered_at: float = math.inf  # when the first load started after fail_until returned
    loads: list[Load] = field(default_factory=list)

    async def load(self) -> Stamp:
        number = len(self.loads) + 1
        started = time.perf_counter()
        failing = self.fail_from <= started < self.fail_until
        record = Load(started=started, finished=math.nan, ok=not failing)
        self.loads.append(record)
        await asyncio.sleep(self.seconds)
        record.finished = time.perf_counter()
        if failing:
            raise SourceDownError(f"load {number}: the source is down")
        if started >= self.fail_until and self.recovered_at == math.inf:
            self.recovered_at = record.finished
        return Stamp(loaded_at=time.time(), load=number)

    def in_failure_period(self, moment: float) -> bool:
        return self.fail_from <= moment < self.recovered_at


@dataclass
class Phase:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)  # every request, returned or raised
    errors: Counter[str] = field(default_factory=Counter)  # requests that raised, by exception type
    max_age: float = 0.0  # of the values served outside the failure period
    over_ttl: int = 0  # values older than ttl + AGE_TOLERANCE served outside the failure period
    failure_requests: int = 0  # requests that started or ended in the failure period
    max_failure_age: float = 0.0  # of the values served in the failure period


@dataclass(frozen=True)
class Configuration:
    name: str
    options: dict[str, Any]  # Meta attributes besides version and caches
    failing: bool  # the source fails for --fail-seconds in the middle of the run
    refresh_period: float | None  # seconds after which an entry is reloaded, when known


@dataclass
class RunResult:
    configuration: str
    requests_per_second: float
    latency: list[float]  # p50, p99, p99.9, max
    slow: int  # requests that took more than SLOW_SECONDS
    errors: int
    error_types: dict[str, int]  # errors by exception type
    loads_ok: int  # loads the measured run started
    loads_failed: int
    max_age: float
    over_ttl: int
    failure_requests: int
    max_failure_age: float
    counters: dict[str, int]  # cacheme.stats(...)'s *_count counters over the measured run


def configurations(args: argparse.Namespace) -> list[Configuration]:
    refresh_after = timedelta(seconds=args.refresh_after)
    stale_window = timedelta(seconds=args.stale_window)
    return [
        Configuration("before", {}, failing=False, refresh_period=args.ttl),
        Configuration(
            "refresh_after",
            {"refresh_after": refresh_after},
            failing=False,
            refresh_period=args.refresh_after,
        ),
        Configuration("early_refresh", {"early_refresh": args.beta}, failing=False, refresh_period=None),
        Configuration(
            "stale_if_error",
            {"refresh_after": refresh_after, "stale_if_error": stale_window},
            failing=True,
            refresh_period=args.refresh_after,
        ),
        Configuration("before, source failing", {}, failing=True, refresh_period=args.ttl),
    ]


def available(configuration: Configuration) -> bool:
    """Whether this cacheme knows every Meta option of ``configuration``."""
    return all(name in cacheme.node.META_OPTIONS for name in configuration.options)


def quantiles(values: Sequence[float], fractions: Sequence[float]) -> list[float]:
    """The values at ``fractions`` of ``values`` (NaN when empty), sorting once.

    The index rule of outage.percentiles, whose fractions are fixed (p50, p95, p99, max).
    """
    if not values:
        return [math.nan] * len(fractions)
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in fractions]


def count_counters(metrics: cacheme.Metrics) -> dict[str, int]:
    """The ``*_count`` counters of ``metrics`` (whichever this cacheme has)."""
    return {
        name: value
        for name, value in metrics.as_dict().items()
        if name.endswith("_count") and isinstance(value, int)
    }


def hot_node_class(
    configuration: Configuration, suffix: str, ttl: timedelta, source: Source
) -> type[cacheme.Node]:
    """A node class of its own for one run: its Meta has the configuration's options."""
    meta_attributes: dict[str, Any] = {
        "version": suffix,
        "caches": [
            cacheme.Cache(storage=f"storm-local-{suffix}", ttl=ttl),
            cacheme.Cache(storage=f"storm-redis-{suffix}", ttl=ttl),
        ],
        **configuration.options,
    }
    # Built from a dict: a Meta class statement naming an option this cacheme does not know
    # would fail where it is compiled, even for the configurations that do not use it.
    meta: type[cacheme.Node.Meta] = type("Meta", (cacheme.Node.Meta,), meta_attributes)

    class HotNode(cacheme.Node):
        Meta = meta

        def key(self) -> str:
            return "storm:hot"

        async def load(self) -> Stamp:
            return await source.load()

    return HotNode


async def run_once(configuration: Configuration, redis_port: int, args: argparse.Namespace) -> RunResult:
    suffix = f"{re.sub(r'[^a-z_]+', '-', configuration.name)}-{random.randrange(1 << 30)}"
    await cacheme.register_storage(f"storm-local-{suffix}", cacheme.Storage("local://tlfu", size=10_000))
    await cacheme.register_storage(
        f"storm-redis-{suffix}", cacheme.Storage(f"redis://127.0.0.1:{redis_port}")
    )
    ttl = args.ttl
    source = Source(seconds=args.load_seconds)
    node_class = hot_node_class(configuration, suffix, timedelta(seconds=ttl), source)
    node = node_class()
    warm_up = Phase("warm-up", args.warmup)
    measured = Phase("measured", args.seconds)
    current: list[Phase] = [warm_up]
    stop = asyncio.Event()

    async def client(index: int) -> None:
        pace = random.Random(index)
        while not stop.is_set():
            await asyncio.sleep(pace.expovariate(1 / args.think))
            phase = current[0]
            started = time.perf_counter()
            try:
                value = await cacheme.get(node)
            except Exception as error:  # counted: the targets want none where stale_if_error serves
                finished = time.perf_counter()
                phase.latencies.append(finished - started)
                phase.errors[type(error).__name__] += 1
                if source.in_failure_period(started) or source.in_failure_period(finished):
                    phase.failure_requests += 1
                continue
            finished = time.perf_counter()
            age = time.time() - value.loaded_at
            phase.latencies.append(finished - started)
            if source.in_failure_period(started) or source.in_failure_period(finished):
                phase.failure_requests += 1
                phase.max_failure_age = max(phase.max_failure_age, age)
            else:
                phase.max_age = max(phase.max_age, age)
                if age > ttl + AGE_TOLERANCE:
                    phase.over_ttl += 1

    tasks = [asyncio.ensure_future(client(i)) for i in range(args.clients)]
    try:
        await asyncio.sleep(warm_up.seconds)
        current[0] = measured
        measured_from = time.perf_counter()
        before = count_counters(cacheme.stats(node_class))
        if configuration.failing:
            source.fail_from = measured_from + args.fail_at
            source.fail_until = source.fail_from + args.fail_seconds
        await asyncio.sleep(measured.seconds)
        measured_until = time.perf_counter()
        after = count_counters(cacheme.stats(node_class))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(SETTLE_SECONDS)  # a background refresh still running ends before its storages
        await cacheme.unregister_storage(f"storm-redis-{suffix}")
        await cacheme.unregister_storage(f"storm-local-{suffix}")
    started_in_run = [load for load in source.loads if measured_from <= load.started < measured_until]
    seconds = measured_until - measured_from
    return RunResult(
        configuration=configuration.name,
        requests_per_second=len(measured.latencies) / seconds,
        latency=quantiles(measured.latencies, (0.5, 0.99, 0.999, 1.0)),
        slow=sum(1 for latency in measured.latencies if latency > SLOW_SECONDS),
        errors=sum(measured.errors.values()),
        error_types=dict(measured.errors),
        loads_ok=sum(1 for load in started_in_run if load.ok),
        loads_failed=sum(1 for load in started_in_run if not load.ok),
        max_age=measured.max_age,
        over_ttl=measured.over_ttl,
        failure_requests=measured.failure_requests,
        max_failure_age=measured.max_failure_age,
        counters={name: after[name] - before.get(name, 0) for name in after},
    )


# ---------------------------------------------------------------- the report


def median_range(values: Sequence[float], show: Callable[[float], str]) -> str:
    """``median (min-max)`` of ``values``; the median alone when every value is the same."""
    numbers = [v for v in values if not math.isnan(v)]
    if not numbers:
        return "-"
    low, middle, high = min(numbers), statistics.median(numbers), max(numbers)
    if low == high:
        return show(middle)
    return f"{show(middle)} ({show(low)}-{show(high)})"


def whole(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def age_text(seconds: float) -> str:
    """An age in ms, to 0.01 ms: how far past the ttl a value was shows."""
    return f"{seconds * 1000:,.2f}"


def listed(values: Sequence[float], show: Callable[[float], str]) -> str:
    return ", ".join(show(v) for v in values)


def expected_loads(configuration: Configuration, args: argparse.Namespace) -> tuple[float, float] | None:
    """The loads a run of ``--seconds`` needs when an entry is reloaded after its refresh period:
    from run / (period + load time) (the period counted from the write) to run / period."""
    if configuration.refresh_period is None:
        return None
    period = configuration.refresh_period
    return args.seconds / (period + args.load_seconds), args.seconds / period


def check(name: str, passed: bool, figures: str) -> str:
    return f"| {name} | {'PASS' if passed else 'FAIL'} | {figures} |"


def targets(results: list[RunResult], args: argparse.Namespace) -> list[str]:
    rows = ["| Target | Result | Figures (every round) |", "|---|---|---|"]
    refresh = [r for r in results if r.configuration == "refresh_after"]
    if refresh:
        slow = [r.slow for r in refresh]
        rows.append(
            check("refresh_after: 0 requests wait > 10 ms", max(slow) == 0, f"{listed(slow, whole)} requests")
        )
        low, high = args.seconds / (args.refresh_after + args.load_seconds), args.seconds / args.refresh_after
        loads = [r.loads_ok + r.loads_failed for r in refresh]
        rows.append(
            check(
                "refresh_after: loads ≈ run / refresh period",
                all(low - 1 <= n <= high + 1 for n in loads),
                f"{listed(loads, whole)} loads in {args.seconds:g} s; expected {low:.1f} to {high:.1f} (±1)",
            )
        )
        ages = [r.max_age for r in refresh]
        rows.append(
            check(
                f"refresh_after: no value older than the ttl ({args.ttl:g} s, +{AGE_TOLERANCE * 1000:g} ms)",
                max(ages) <= args.ttl + AGE_TOLERANCE,
                f"max age {listed(ages, age_text)} ms",
            )
        )
    else:
        rows.append("| refresh_after targets | not run | not selected, or no Meta.refresh_after here |")
    stale = [r for r in results if r.configuration == "stale_if_error"]
    if stale:
        errors = [r.errors for r in stale]
        rows.append(
            check(
                "stale_if_error, source failing: 0 caller errors",
                max(errors) == 0,
                f"{listed(errors, whole)} errors",
            )
        )
        limit = args.ttl + args.stale_window
        fresh = [r.max_age for r in stale]
        during = [r.max_failure_age for r in stale]
        rows.append(
            check(
                f"stale_if_error (our check): age <= ttl outside the failure period, <= {limit:g} s in it",
                max(fresh) <= args.ttl + AGE_TOLERANCE and max(during) <= limit + AGE_TOLERANCE,
                f"outside {listed(fresh, age_text)} ms; in it {listed(during, age_text)} ms",
            )
        )
    else:
        rows.append("| stale_if_error target | not run | not selected, or no Meta.stale_if_error here |")
    return rows


def report(
    results: list[RunResult], skipped: list[str], args: argparse.Namespace, wall_seconds: float
) -> str:
    names = list(dict.fromkeys(r.configuration for r in results))
    rounds = len(results) // max(1, len(names))
    failure_end = args.fail_at + args.fail_seconds
    setup = (
        f"{rounds} round(s), the configurations alternating; the invocation took {wall_seconds:.0f} s. "
        f"One hot key on [local://tlfu, Redis (private server on loopback)], ttl {args.ttl:g} s on both; "
        f"source {args.load_seconds * 1000:g} ms; {args.clients} clients, each waiting "
        f"{args.think * 1000:g} ms on average (exponential) between requests (offered load "
        f"{args.clients / args.think:,.0f} requests/s; the requests/s column is what the event loop "
        f"served); warm-up {args.warmup:g} s (not counted), measured run "
        f"{args.seconds:g} s. refresh_after {args.refresh_after:g} s, early_refresh "
        f"beta {args.beta:g}, stale_if_error {args.stale_window:g} s. Failing runs: the source raises for "
        f"every load started from {args.fail_at:g} s to {failure_end:g} s of the run; the failure period "
        f"lasts until the first load after that returns. Median over the rounds (range). Latencies in ms, "
        f"of every request (returned or raised); ages in ms, `time.time()` minus the time the source "
        f"made the value. Loads: the ones the measured run started, ok/failed; expected from the refresh "
        f"period: run / (period + load) to run / period. Python {platform.python_version()}, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}."
    )
    lines = [
        BEGIN,
        "## Storm: one hot key at its expiry (`benchmarks/storm.py`)",
        "",
        setup,
        "",
    ]
    if skipped:
        lines += [f"Not available yet in this cacheme (Meta options unknown): {', '.join(skipped)}.", ""]
    lines += [
        "| configuration | requests/s | p50 | p99 | p99.9 | max | waited > 10 ms | loads ok | loads failed "
        f"| loads/s | expected loads | max age | values > ttl + {AGE_TOLERANCE * 1000:g} ms "
        "| failure period: requests | max age | caller errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        runs = [r for r in results if r.configuration == name]
        configuration = next(c for c in configurations(args) if c.name == name)
        expected = expected_loads(configuration, args)
        cells = [
            name,
            median_range([r.requests_per_second for r in runs], whole),
            *(median_range([r.latency[i] for r in runs], ms) for i in range(4)),
            median_range([r.slow for r in runs], whole),
            median_range([r.loads_ok for r in runs], whole),
            median_range([r.loads_failed for r in runs], whole),
            median_range([(r.loads_ok + r.loads_failed) / args.seconds for r in runs], lambda v: f"{v:.2f}"),
            "-" if expected is None else f"{expected[0]:.1f}-{expected[1]:.1f}",
            median_range([r.max_age for r in runs], age_text),
            median_range([r.over_ttl for r in runs], whole),
            median_range([r.failure_requests for r in runs], whole) if configuration.failing else "-",
            median_range([r.max_failure_age for r in runs], age_text) if configuration.failing else "-",
            median_range([r.errors for r in runs], whole),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    counter_names = list(dict.fromkeys(name for r in results for name in r.counters))
    lines += [
        "",
        "cacheme's counters (`cacheme.stats(HotNode).as_dict()`, the `*_count` ones, over the measured run):",
        "",
        "| configuration | " + " | ".join(counter_names) + " |",
        "|---|" + "---:|" * len(counter_names),
    ]
    for name in names:
        runs = [r for r in results if r.configuration == name]
        cells = [
            median_range([r.counters.get(counter, math.nan) for r in runs], whole)
            for counter in counter_names
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name in names:
        types: Counter[str] = Counter()
        for r in results:
            if r.configuration == name:
                types.update(r.error_types)
        if types:
            shown = ", ".join(f"{kind} {count:,}" for kind, count in types.most_common())
            lines.append(f"\nCaller errors of {name}, every round together: {shown}.")
    lines += ["", "Targets (issue 13):", "", *targets(results, args), END]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--think", type=float, default=0.005, help="mean seconds between a client's requests")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds, not counted")
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured run")
    parser.add_argument("--ttl", type=float, default=1.0, help="seconds, on both tiers")
    parser.add_argument("--load-seconds", type=float, default=0.2, help="how long the source takes")
    parser.add_argument("--refresh-after", type=float, default=0.8, help="seconds (Meta.refresh_after)")
    parser.add_argument("--beta", type=float, default=1.0, help="XFetch's beta (Meta.early_refresh)")
    parser.add_argument("--stale-window", type=float, default=5.0, help="seconds (Meta.stale_if_error)")
    parser.add_argument("--fail-at", type=float, default=4.0, help="seconds into the measured run")
    parser.add_argument("--fail-seconds", type=float, default=3.0, help="how long the source fails")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--only", action="append", default=None, help="run this configuration only (repeatable)"
    )
    parser.add_argument("--no-write", action="store_true", help="print the report, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.fail_at + args.fail_seconds >= args.seconds:
        parser.error("the failure (--fail-at + --fail-seconds) must end before the run (--seconds)")
    known = [c.name for c in configurations(args)]
    for name in args.only or []:
        if name not in known:
            parser.error(f"--only {name!r}: the configurations are {', '.join(map(repr, known))}")
    return args


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    begun = time.perf_counter()
    chosen = [c for c in configurations(args) if args.only is None or c.name in args.only]
    runnable = [c for c in chosen if available(c)]
    skipped = [c.name for c in chosen if not available(c)]
    for name in skipped:
        print(f"{name}: not available yet (this cacheme's Meta does not know its options)", flush=True)
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        try:
            for round_number in range(args.rounds):
                for configuration in runnable:
                    print(f"round {round_number + 1}: {configuration.name} ...", flush=True)
                    server.admin.command("FLUSHALL")
                    results.append(await run_once(configuration, server.port, args))
        finally:
            server.stop()
    text = report(results, skipped, args, time.perf_counter() - begun)
    print(text)
    if not args.no_write:
        write_report(text, BEGIN, END)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
