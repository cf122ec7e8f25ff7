"""Latency while Redis fails: 5,000 workers on [local, Redis], Redis behind a TCP proxy of our own.

    python benchmarks/outage.py                 # health on and off, alternating, 1 round
    python benchmarks/outage.py --rounds 3 --phase-seconds 10

Phases, one after the other on one storage registration: **normal**; **blackhole** (the proxy
accepts and never answers, as a dead host or a paused VM does) for ``--blackhole-seconds``;
**healed**; **slow** (every chunk delayed ``--slow-delay`` seconds each way: +200 ms per round
trip by default). Each worker is a client that waits ``--think`` seconds on average (exponential)
between requests, takes Zipf keys and awaits ``cacheme.get``; the source answers in 5 ms. The
default offered load (5,000 workers, 0.5 s: 10,000 requests/s) is below what one event loop does
on the 2-core machine the figures come from, so latencies measure cacheme, not a saturated loop.
Printed per phase: p50, p95, p99 and max latency of every request, the same over the requests
the local tier could not answer (those that went to Redis or the source), and throughput.
"health off" is ``cacheme.Health.off()`` (no deadline, no breaker: how cacheme behaved before
issue 11), "health on" the default ``cacheme.Health()``. The report also gives how long after the
heal Redis answered again.

Targets (issue 11), health on, blackhole phase after the breaker opened: p50 <= 20 ms,
p95 <= 250 ms, throughput >= 50% of the normal phase; recovery <= 1 s after the heal.
The report is written between markers into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import platform
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cacheme  # noqa: E402
from benchmarks.redis_server import RedisServer  # noqa: E402
from cacheme.storage import MISSING  # noqa: E402
from tests.fixtures.proxy import TcpProxy  # noqa: E402

RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- outage:begin -->", "<!-- outage:end -->"
LOAD_SECONDS = 0.005
KEY_SPACE = 200_000


@dataclass
class Phase:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)  # every request
    remote: list[float] = field(default_factory=list)  # requests the local tier did not answer
    started: float = 0.0


def zipf_keys(count: int, seed: int) -> list[int]:
    """``count`` keys drawn with P(k) proportional to (10 + k) ** -1.001 over [0, KEY_SPACE)."""
    weights = list(itertools.accumulate((10 + k) ** -1.001 for k in range(KEY_SPACE)))
    rng = random.Random(seed)
    total = weights[-1]
    return [bisect.bisect_left(weights, rng.random() * total) for _ in range(count)]


def percentiles(values: list[float]) -> list[float]:
    """p50, p95, p99 and max of ``values`` (NaN when empty), sorting once."""
    if not values:
        return [float("nan")] * 4
    ordered = sorted(values)
    return [ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.95, 0.99, 1.0)]


async def run_once(
    label: str, health: cacheme.Health, redis_port: int, args: argparse.Namespace
) -> dict[str, Any]:
    proxy = TcpProxy("127.0.0.1", redis_port).start()
    suffix = f"{label.replace(' ', '-')}-{random.randrange(1 << 30)}"
    local = cacheme.Storage("local://tlfu", size=50_000)
    remote = cacheme.Storage(proxy.url("redis"), pool_size=100, health=health)
    assert isinstance(local, cacheme.LocalStorage)
    await cacheme.register_storage(f"outage-local-{suffix}", local)
    await cacheme.register_storage(f"outage-redis-{suffix}", remote)

    class OutageNode(cacheme.Node):
        number: int

        def key(self) -> str:
            return f"outage:{self.number}"

        async def load(self) -> int:
            await asyncio.sleep(LOAD_SECONDS)
            return self.number

        class Meta(cacheme.Node.Meta):
            version = suffix
            caches = [
                cacheme.Cache(storage=f"outage-local-{suffix}", ttl=timedelta(seconds=args.local_ttl)),
                cacheme.Cache(storage=f"outage-redis-{suffix}", ttl=timedelta(minutes=10)),
            ]

    phases = [
        Phase("warm-up", args.phase_seconds),
        Phase("normal", args.phase_seconds),
        Phase("blackhole", args.blackhole_seconds),
        Phase("healed", args.phase_seconds),
        Phase("slow", args.phase_seconds),
    ]
    # The blackhole's requests that started once the breaker was open (health on only).
    opened = Phase("blackhole, breaker open", 0.0)
    keys = zipf_keys(200_000, seed=11)
    current: list[Phase] = [phases[0]]
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def worker(offset: int) -> None:
        position = offset * 37
        pace = random.Random(offset)
        while not stop.is_set():
            # Each worker is a client that sends its next request after a think time (mean
            # --think seconds): a steady offered load, as a service's clients make, rather than a
            # loop saturated by workers whose local hits never yield.
            await asyncio.sleep(pace.expovariate(1 / args.think))
            number = keys[position % len(keys)]
            position += 1
            node = OutageNode(number=number)
            in_local = local.get_sync(node.full_key()) is not MISSING
            started = time.perf_counter()
            try:
                value = await cacheme.get(node)
            except Exception as error:  # counted: no caller may get an error
                errors.append(error)
                continue
            elapsed = time.perf_counter() - started
            assert value == number
            phase = current[0]
            phase.latencies.append(elapsed)
            if not in_local:
                phase.remote.append(elapsed)

    redis_back_after: float | None = None
    tasks = [asyncio.ensure_future(worker(i)) for i in range(args.workers)]
    try:
        for phase in list(phases):
            if phase.name == "blackhole":
                proxy.blackhole()
            elif phase.name == "healed":
                proxy.pass_through()
                healed_at = time.perf_counter()
            elif phase.name == "slow":
                proxy.delay(args.slow_delay)
            current[0] = phase
            phase.started = time.perf_counter()
            deadline = phase.started + phase.seconds
            while time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
                state = cacheme.storage_health(f"outage-redis-{suffix}").state
                if phase.name == "blackhole" and state == "open" and not opened.started:
                    opened.started = time.perf_counter()
                    current[0] = opened
                if phase.name == "healed" and redis_back_after is None and state == "closed":
                    redis_back_after = time.perf_counter() - healed_at
            if opened.started and phase.name == "blackhole":
                opened.seconds = time.perf_counter() - opened.started
                phase.seconds = opened.started - phase.started
                phases.insert(phases.index(phase) + 1, opened)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        proxy.pass_through()
        await cacheme.unregister_storage(f"outage-redis-{suffix}")
        await cacheme.unregister_storage(f"outage-local-{suffix}")
        proxy.stop()
    snapshot = remote.breaker.snapshot()
    return {
        "label": label,
        "errors": len(errors),
        "redis_back_after": redis_back_after,
        "breaker": snapshot,
        "phases": [
            {
                "name": phase.name,
                "requests": len(phase.latencies),
                "throughput": len(phase.latencies) / phase.seconds,
                "all": percentiles(phase.latencies),
                "remote": percentiles(phase.remote),
                "remote_requests": len(phase.remote),
            }
            for phase in phases
        ],
    }


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:,.1f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    setup = (
        f"{args.rounds} round(s), health off and on alternating; a warm-up phase before each run is not "
        f"shown. {args.workers:,} workers, each waiting {args.think * 1000:g} ms on average between requests "
        f"(offered load {args.workers / args.think:,.0f} requests/s), source 5 ms, Zipf keys, local ttl "
        f"{args.local_ttl:g} s, Redis "
        f"pool 100; phases normal {args.phase_seconds:g} s, blackhole {args.blackhole_seconds:g} s, healed "
        f"{args.phase_seconds:g} s, slow (+{args.slow_delay * 2000:g} ms per round trip) "
        f"{args.phase_seconds:g} s. Latencies in ms: all requests, then the requests the local tier could "
        f"not answer. Python {platform.python_version()}, {platform.machine()}, {time.strftime('%Y-%m-%d')}."
    )
    lines = [
        BEGIN,
        "## Outage: [local, Redis] while Redis fails (`benchmarks/outage.py`)",
        "",
        setup,
        "",
        "| health | phase | requests/s | p50 | p95 | p99 | max "
        "| remote p50 | remote p95 | remote p99 | remote max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for phase in result["phases"]:
            if phase["name"] == "warm-up":
                continue
            a, r = phase["all"], phase["remote"]
            lines.append(
                f"| {result['label']} | {phase['name']} | {phase['throughput']:,.0f} | "
                + " | ".join(ms(x) for x in a)
                + " | "
                + " | ".join(ms(x) for x in r)
                + " |"
            )
    lines.append("")
    for result in results:
        back = result["redis_back_after"]
        snapshot = result["breaker"]
        lines.append(
            f"- {result['label']}: caller errors {result['errors']}; breaker opened {snapshot.opened_count} "
            f"time(s), {snapshot.skipped_count:,} operations skipped; "
            + ("breaker closed again " + f"{back:.2f} s after the heal" if back is not None else "no breaker")
            + "."
        )
    lines.append(END)
    return "\n".join(lines)


def write_report(text: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``text`` between the markers ``begin`` and ``end`` of RESULTS.md (at its end the first time)."""
    current = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    updated = (
        pattern.sub(lambda _: text, current) if pattern.search(current) else f"{current.rstrip()}\n\n{text}\n"
    )
    RESULTS_MD.write_text(updated)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=5_000)
    parser.add_argument("--phase-seconds", type=float, default=5.0)
    parser.add_argument("--blackhole-seconds", type=float, default=10.0)
    parser.add_argument("--slow-delay", type=float, default=0.1, help="seconds per chunk, each way")
    parser.add_argument("--local-ttl", type=float, default=2.0)
    parser.add_argument("--think", type=float, default=0.5, help="mean seconds between a worker's requests")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=["on", "off"], default=None, help="run one variant only")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave RESULTS.md alone")
    return parser.parse_args(argv)


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    variants = [("health off", cacheme.Health.off()), ("health on", cacheme.Health())]
    if args.only:
        variants = [v for v in variants if v[0].endswith(args.only)]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        try:
            for round_number in range(args.rounds):
                for label, health in variants:
                    print(f"round {round_number + 1}: {label} ...", flush=True)
                    server.admin.command("FLUSHALL")
                    results.append(await run_once(label, health, server.port, args))
        finally:
            server.stop()
    text = report(results, args)
    print(text)
    if not args.no_write:
        write_report(text)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
