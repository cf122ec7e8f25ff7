"""A fleet of processes on one Zipf trace, with and without leases (``Meta.lease``).

    python benchmarks/fleet.py                  # 3 rounds, every scenario (about 5 minutes here)
    python benchmarks/fleet.py --rounds 5
    python benchmarks/fleet.py --quick          # 10,000 requests, 1 round
    python benchmarks/fleet.py --only same --no-baseline --no-write

Each process is a child of this driver with its own event loop (``python benchmarks/fleet.py
--child SPEC``) and the chain [local (``local://tlfu``, size 100,000), Redis (``--redis-port``,
6379, on loopback)], ttl 10 minutes on both (nothing expires during a run). The trace is the first
``--requests`` (50,000) keys of ``benchmarks/zipf.py``'s trace (fixed seed; 20,640 unique keys).
A process runs ``--workers`` (1,000) tasks that take the next key from one shared iterator and
``await cacheme.get(node)`` on it; a node's source sleeps ``--load-ms`` (5 ms, a database round
trip) and counts the key it loaded. Scenarios:

- **alone**: one process runs the whole trace;
- **same**: ``--processes`` (4) processes run the whole trace each, at once;
- **split**: 4 processes run disjoint quarters of the trace at once (process i the requests
  i, i + 4, i + 8, ...: a round-robin balancer in front of the fleet).

Variants: **leases** (this cacheme, ``Meta.lease = 10 s``), **off** (this cacheme, no lease) and,
in *alone* only, **baseline**: the cacheme of commit 1febfcf (before leases), from a git worktree
(``--baseline-dir``, made with ``git worktree add`` when missing), its children run with
``PYTHONPATH`` set to its cacheme-core/src, cacheme-local/src and cacheme-redis/src (each child
reports ``cacheme.__file__``, and the driver checks it). In each round every scenario runs its
variants in an order rotated from round to round; *alone* then runs ``--repeats`` - 1 (2) more
pairs of **off** and **baseline** (short runs, and the machine is noisy), alternating.

Before a run each child registers its storages, sets a key prefix of the run's own (a fresh
random one per run, so runs never see each other's keys), gets one key outside the trace (its
first use: configures the node class, opens the connections, subscribes to the lease notices),
then says ``ready``; the driver answers ``go T`` to every child at once, T a wall-clock time
0.3 s ahead, and each child starts at T. A process's time runs from T to its last answer; a
run's wall time is the largest of its processes'. CPU: ``resource.getrusage`` (user + system,
the process's threads included) from T until its write-backs ended. Latency: of every request,
every process pooled. After the run the driver counts the prefix's keys in Redis (and any lease
marks left), then deletes them (``SCAN`` + ``DEL``, that prefix only). Redis commands: ``INFO
commandstats`` before and after the run (the server's: other clients of it are counted too).

Besides the table, the report notes what a reader should look into: keys loaded more than once
with leases on (and how many of those loads began while the loading process's Redis breaker was
open, so that it asked for no lease), requests that waited more than half a lease (and when and
by whom their key was loaded), lease marks left in Redis, keys missing from it, caller errors.

Targets (the leases issue):

- 4 processes, leases on: total loads <= 1.02 x unique keys, in every round (without leases the
  same trace loads about 3.94 x);
- 4 processes, leases on: wall time <= 1.2 x one process alone running the trace (leases on);
  ratio of the medians over the rounds;
- one process, leases off: time and CPU per request unchanged against commit 1febfcf (the ratio
  of the medians within +-5%).

The machine is shared and has 2 cores: 4 processes busy at once share them, and only ratios
within one invocation hold. The report is written between markers into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()  # the children run it too (``--child``)
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

import cacheme  # noqa: E402
import cacheme.node  # noqa: E402
from benchmarks.children import Child  # noqa: E402
from benchmarks.outage import write_report  # noqa: E402
from benchmarks.redis_server import AdminClient  # noqa: E402
from benchmarks.storm import count_counters, listed, median_range, quantiles, whole  # noqa: E402
from benchmarks.zipf import trace_keys  # noqa: E402
from cacheme import singleflight  # noqa: E402

BEGIN, END = "<!-- fleet:begin -->", "<!-- fleet:end -->"
BASELINE_COMMIT = "1febfcf"
BASELINE_SOURCES = ("cacheme-core/src", "cacheme-local/src", "cacheme-redis/src")
LOCAL_NAME, REDIS_NAME = "fleet-local", "fleet-redis"
LOCAL_SIZE = 100_000  # holds every key of the trace: the local tier never evicts
TTL = timedelta(minutes=10)  # nothing expires during a run
LEASE = timedelta(seconds=10)
LONG_WAIT = LEASE.total_seconds() / 2  # a request this slow waited for most of a lease
START_AHEAD = 0.3  # seconds between the driver's "go" and the common start
READY_TIMEOUT = 120.0
RUN_TIMEOUT = 600.0
SETTLE_TIMEOUT = 30.0  # a child's wait for its write-backs after its last answer
# The targets.
LOADS_TARGET = 1.02
TIME_TARGET = 1.2
UNCHANGED_TOLERANCE = 0.05

COMMANDS_SHOWN = ("eval", "mget", "set", "publish")
VARIANTS = {
    "leases": "ours, leases on",
    "off": "ours, leases off",
    "baseline": f"{BASELINE_COMMIT} (before leases)",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    processes: int
    split: bool  # each process runs its share of the trace (else the whole trace)

    def label(self, requests: int) -> str:
        if self.processes == 1:
            return f"1 process, {requests:,} requests"
        if self.split:
            return f"{self.processes} processes, disjoint {requests // self.processes:,} each"
        return f"{self.processes} processes x the same {requests:,}"


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    return [
        Scenario("alone", 1, split=False),
        Scenario("same", args.processes, split=False),
        Scenario("split", args.processes, split=True),
    ]


def share(keys: Sequence[int], index: int, processes: int, split: bool) -> list[int]:
    """The requests of process ``index``: split, every ``processes``-th request from the
    ``index``-th on; else the whole trace."""
    return list(keys[index::processes]) if split else list(keys)


# ---------------------------------------------------------------- a child (one process of the fleet)


def say(line: str) -> None:
    print(line, flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def item_class(lease: bool, load_seconds: float, record: Callable[[int], None]) -> type[cacheme.Node]:
    """The node class of a run: [local, Redis], its source sleeping ``load_seconds`` and passing
    each key it loads to ``record``; ``Meta.lease`` only when ``lease`` (the baseline knows no
    such option: a Meta naming it would not even be defined there)."""
    meta_attributes: dict[str, Any] = {
        "version": "v1",
        "caches": [cacheme.Cache(LOCAL_NAME, TTL), cacheme.Cache(REDIS_NAME, TTL)],
    }
    if lease:
        meta_attributes["lease"] = LEASE
    meta: type[cacheme.Node.Meta] = type("Meta", (cacheme.Node.Meta,), meta_attributes)

    class Item(cacheme.Node):
        Meta = meta
        id: int

        def key(self) -> str:
            return f"fleet:{self.id}"

        async def load(self) -> int:
            record(self.id)
            await asyncio.sleep(load_seconds)
            return self.id

    return Item


async def write_backs_done(seconds: float) -> bool:
    """Wait until the engine has nothing in flight in this loop (its write-backs; the lease notices
    still queued then go out when the Redis storage is closed)."""
    deadline = time.monotonic() + seconds
    while singleflight.in_flight_count() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.002)  # the engine offers nothing to wait on
    return not singleflight.in_flight_count()


async def lease_notices_subscribed(seconds: float) -> bool:
    """Wait until every lease hub of this process listens for notices (read from cacheme.lease's
    internals, which the benchmark only reads: cacheme offers no public health for them yet)."""
    from cacheme import lease  # this cacheme's only; the baseline never gets here

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hubs = list(lease._hubs.values())
        if hubs and all(hub.subscribed for hub in hubs):
            return True
        await asyncio.sleep(0.01)  # the subscription is made in cacheme's bus thread
    return False


def read_requests(spec: dict[str, Any]) -> list[int]:
    """This process's requests: its share of the trace the driver wrote."""
    keys: list[int] = json.loads(Path(spec["trace"]).read_text())
    return share(keys, spec["index"], spec["processes"], spec["split"])


async def child(spec: dict[str, Any]) -> None:
    """One process: set up, warm up, ``ready``; at ``go T`` run the requests from T; one JSON line."""
    await cacheme.register_storage(LOCAL_NAME, cacheme.Storage("local://tlfu", size=LOCAL_SIZE))
    await cacheme.register_storage(REDIS_NAME, cacheme.Storage(f"redis://127.0.0.1:{spec['redis_port']}/0"))
    cacheme.set_prefix(spec["prefix"])
    loaded: list[int] = []
    load_times: list[float] = []  # time.time() when each load began
    # The Redis tier's breaker when each load began: a load while it is not closed had no lease.
    breaker_at_load: list[str] = []

    def record(key: int) -> None:
        loaded.append(key)
        load_times.append(time.time())
        breaker_at_load.append(cacheme.storage_health(REDIS_NAME).state)

    item = item_class(spec["lease"], spec["load_seconds"], record)
    requests = read_requests(spec)
    try:
        # The node class's first use, on a key of this process outside the trace (ids are >= 0).
        warm = time.perf_counter()
        await cacheme.get(item(id=-1 - spec["index"]))  # type: ignore[call-arg]
        await write_backs_done(SETTLE_TIMEOUT)
        subscribed = await lease_notices_subscribed(10.0) if spec["lease"] else None
        warm_up = time.perf_counter() - warm
        loaded.clear()
        load_times.clear()
        breaker_at_load.clear()
        before = count_counters(cacheme.stats(item))
        health_before = cacheme.storage_health(REDIS_NAME)
        latencies: list[float] = []
        long_waits: list[tuple[int, float, float]] = []  # key, when it was asked (from T), latency
        start_at = 0.0
        wrong = errors = 0
        first_error = ""
        pending = iter(requests)

        async def worker() -> None:
            nonlocal wrong, errors, first_error
            for key in pending:
                node = item(id=key)  # type: ignore[call-arg]
                started = time.perf_counter()
                try:
                    value = await cacheme.get(node)
                except Exception as error:  # counted and reported
                    errors += 1
                    first_error = first_error or f"{type(error).__name__}: {error}"
                else:
                    wrong += value != key
                latency = time.perf_counter() - started
                latencies.append(latency)
                if latency > LONG_WAIT:
                    long_waits.append((key, time.time() - latency - start_at, latency))

        gc.collect()
        say("ready")
        words = (await asyncio.to_thread(sys.stdin.readline)).split()
        if words[:1] != ["go"]:
            raise SystemExit(f"expected 'go T', got {words!r}")
        start_at = float(words[1])
        await asyncio.sleep(max(0.0, start_at - time.time()))
        late = time.time() - start_at
        cpu = cpu_seconds()
        clock = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(spec["workers"])))
        elapsed = late + time.perf_counter() - clock
        settled = await write_backs_done(SETTLE_TIMEOUT)
        cpu = cpu_seconds() - cpu
        after = count_counters(cacheme.stats(item))
        health = cacheme.storage_health(REDIS_NAME)
    finally:
        # Closing the Redis storage also sends the lease notices still queued.
        await cacheme.unregister_storage(LOCAL_NAME)
        await cacheme.unregister_storage(REDIS_NAME)
    result = {
        "index": spec["index"],
        "cacheme_file": cacheme.__file__,
        "requests": len(requests),
        "unique": len(set(requests)),
        "late": late,
        "elapsed": elapsed,
        "settled": settled,
        "cpu": cpu,
        "warm_up": warm_up,
        "subscribed": subscribed,
        "latencies": [round(latency, 7) for latency in latencies],
        "loaded": loaded,
        "breaker_at_load": breaker_at_load,
        "load_times": [round(moment - start_at, 4) for moment in load_times],
        "long_waits": long_waits,
        "wrong": wrong,
        "errors": errors,
        "first_error": first_error,
        "counters": {name: after[name] - before.get(name, 0) for name in after},
        "storage_failures": health.failure_count - health_before.failure_count,
        "breaker_opened": health.opened_count - health_before.opened_count,
    }
    say(json.dumps(result))


# ---------------------------------------------------------------- the driver's side of a child


# ---------------------------------------------------------------- one run


@dataclass
class ProcessResult:
    index: int
    cacheme_file: str
    requests: int
    unique: int
    late: float  # how late the process started after the common start
    elapsed: float  # from the common start to its last answer
    settled: bool  # its write-backs ended within SETTLE_TIMEOUT
    cpu: float  # user + system seconds, from the start until its write-backs ended
    warm_up: float
    subscribed: bool | None  # the lease notices' subscription was up before the start
    latencies: list[float]
    loaded: list[int]  # the keys its source loaded, in order
    breaker_at_load: list[str]  # the Redis tier's breaker state when each of those loads began
    load_times: list[float]  # when each of those loads began, seconds from the common start
    long_waits: list[tuple[int, float, float]]  # requests slower than LONG_WAIT: key, asked at, latency
    wrong: int
    errors: int
    first_error: str
    counters: dict[str, int]
    storage_failures: int
    breaker_opened: int


@dataclass
class RunResult:
    round: int
    scenario: str
    variant: str
    processes: list[ProcessResult]
    unique_keys: int  # of every request of the run
    redis_keys: int  # of the run's prefix, after the run (warm-up keys included)
    marks_left: int  # keys still holding a lease mark after the run
    commands: Counter[str]  # Redis commands during the run, by name (INFO commandstats, the server's)
    stderr: list[str] = field(default_factory=list)

    @property
    def loads(self) -> int:
        return sum(len(p.loaded) for p in self.processes)

    @property
    def load_ratio(self) -> float:
        return self.loads / self.unique_keys

    @property
    def wall(self) -> float:
        return max(p.elapsed for p in self.processes)

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.processes)

    @property
    def cpu_per_request(self) -> float:
        return sum(p.cpu for p in self.processes) / self.requests

    def latency(self) -> list[float]:
        return quantiles([v for p in self.processes for v in p.latencies], (0.5, 0.99, 1.0))

    def counter(self, name: str) -> float:
        values = [p.counters[name] for p in self.processes if name in p.counters]
        return float(sum(values)) if values else math.nan

    def loads_while_breaker_not_closed(self, keys: Collection[int]) -> int:
        """Loads of ``keys`` that began while this process's Redis breaker was open or half-open."""
        return sum(
            1
            for p in self.processes
            for key, state in zip(p.loaded, p.breaker_at_load, strict=True)
            if key in keys and state != "closed"
        )

    def loaded_more_than_once(self) -> Counter[int]:
        """Keys loaded more than once across the processes, and how often."""
        counts = Counter(key for p in self.processes for key in p.loaded)
        return Counter({key: n for key, n in counts.items() if n > 1})


def run_prefix(scenario: str, variant: str, round_number: int) -> str:
    return f"fleet-{scenario}-{variant}-{round_number}-{uuid.uuid4().hex[:10]}"


def sweep(admin: AdminClient, prefix: str) -> tuple[int, int]:
    """Count the keys of ``prefix`` and the lease marks among them, then delete them (that prefix only)."""
    from cacheme.entry import LEASE_MARK  # the driver runs this cacheme, never the baseline

    keys: list[str] = []
    cursor = "0"
    while True:
        reply = admin.command("SCAN", cursor, "MATCH", f"{prefix}:*", "COUNT", "1000")
        assert isinstance(reply, list)
        raw_cursor, found = reply
        keys += [key.decode() for key in found]
        cursor = raw_cursor.decode()
        if cursor == "0":
            break
    marks = 0
    for offset in range(0, len(keys), 1000):
        chunk = keys[offset : offset + 1000]
        values = admin.command("MGET", *chunk)
        assert isinstance(values, list)
        marks += sum(1 for value in values if isinstance(value, bytes) and value.startswith(LEASE_MARK))
        admin.command("DEL", *chunk)
    return len(set(keys)), marks


def command_stats(admin: AdminClient) -> Counter[str]:
    """Calls of each command so far, as the server counts them (``INFO commandstats``; the commands
    a Lua script runs are counted too, under their own names)."""
    reply = admin.command("INFO", "commandstats")
    assert isinstance(reply, bytes)
    calls: Counter[str] = Counter()
    for line in reply.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_") :].partition(":")
            calls[name] = int(fields.split(",")[0].removeprefix("calls="))
    return calls


async def run_once(
    scenario: Scenario,
    variant: str,
    round_number: int,
    trace: Path,
    keys: Sequence[int],
    workdir: Path,
    admin: AdminClient,
    baseline: Path | None,
    args: argparse.Namespace,
) -> RunResult:
    prefix = run_prefix(scenario.name, variant, round_number)
    env = dict(os.environ)
    if variant == "baseline":
        assert baseline is not None
        paths = [str(baseline / source) for source in BASELINE_SOURCES]
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    children: list[Child] = []
    try:
        for index in range(scenario.processes):
            spec = {
                "prefix": prefix,
                "index": index,
                "processes": scenario.processes,
                "split": scenario.split,
                "trace": str(trace),
                "lease": variant == "leases",
                "load_seconds": args.load_ms / 1000,
                "workers": args.workers,
                "redis_port": args.redis_port,
            }
            log = (args.logs or workdir) / f"{prefix}-{index}.stderr"
            children.append(
                await Child.start(f"{variant} process {index}", SCRIPT, spec, log, cwd=ROOT, env=env)
            )
        for process in children:
            line = await process.line(READY_TIMEOUT)
            if line != "ready":
                raise RuntimeError(f"{process.name}: expected 'ready', got {line[:200]!r}")
        before = command_stats(admin)
        start_at = time.time() + START_AHEAD
        for process in children:
            await process.send(f"go {start_at!r}")
        answers = [json.loads(await process.line(RUN_TIMEOUT)) for process in children]
        commands = command_stats(admin)
        commands.subtract(before)
        stderr = [f"{process.name}: {line}" for process in children for line in await process.finish(60)]
    except BaseException:
        for process in children:
            process.kill()
        raise
    finally:
        redis_keys, marks_left = sweep(admin, prefix)
    results = [ProcessResult(**answer) for answer in answers]
    expected_root = baseline if variant == "baseline" else ROOT
    for result in results:
        if expected_root is None or not Path(result.cacheme_file).is_relative_to(expected_root):
            raise RuntimeError(f"{variant}: a child imported cacheme from {result.cacheme_file}")
    requested = {
        key
        for index in range(scenario.processes)
        for key in share(keys, index, scenario.processes, scenario.split)
    }
    return RunResult(
        round=round_number,
        scenario=scenario.name,
        variant=variant,
        processes=results,
        unique_keys=len(requested),
        redis_keys=redis_keys,
        marks_left=marks_left,
        commands=+commands,
        stderr=stderr,
    )


# ---------------------------------------------------------------- the baseline


def git(*arguments: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(["git", *arguments], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def baseline_worktree(directory: Path, commit: str) -> Path:
    """A worktree of ``commit`` at ``directory``: added when missing, checked when there."""
    wanted = git("rev-parse", f"{commit}^{{commit}}")
    if not directory.exists():
        print(f"adding a worktree of {commit} at {directory} ...", flush=True)
        git("worktree", "add", "--detach", str(directory), wanted)
    found = git("rev-parse", "HEAD", cwd=directory)
    if found != wanted:
        raise SystemExit(
            f"{directory} holds {found[:10]}, not {commit}: give --baseline-dir another directory"
        )
    for source in BASELINE_SOURCES:
        if not (directory / source).is_dir():
            raise SystemExit(f"{directory / source}: not a source directory of the baseline")
    return directory


# ---------------------------------------------------------------- what was measured


@dataclass(frozen=True)
class SourceState:
    """This checkout's library sources: the commit, whether they differ from it, and their digest."""

    commit: str
    dirty: bool
    digest: str

    def describe(self) -> str:
        return f"commit {self.commit}" + (" with uncommitted changes to the library" if self.dirty else "")


def source_state() -> SourceState:
    """The state of ``BASELINE_SOURCES`` in this checkout (the children import them as they are)."""
    digest = hashlib.sha256()
    for source in BASELINE_SOURCES:
        for path in sorted((ROOT / source).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", *BASELINE_SOURCES))
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    return SourceState(commit, dirty, digest.hexdigest())


# ---------------------------------------------------------------- the report


def seconds_text(value: float) -> str:
    return f"{value:.2f}"


def ms_text(value: float) -> str:
    return f"{value * 1000:,.2f}" if value < 0.1 else f"{value * 1000:,.1f}"


def us_text(value: float) -> str:
    return f"{value * 1e6:,.0f}"


def ratio_text(value: float) -> str:
    return f"{value:.2f}"


def ratio3(value: float) -> str:
    return f"{value:.3f}"


def runs_of(results: list[RunResult], scenario: str, variant: str) -> list[RunResult]:
    return [r for r in results if r.scenario == scenario and r.variant == variant]


def median_of(runs: list[RunResult], value: Callable[[RunResult], float]) -> float:
    return statistics.median(value(r) for r in runs) if runs else math.nan


def per_round_ratios(
    results: list[RunResult],
    top: tuple[str, str],
    bottom: tuple[str, str],
    value: Callable[[RunResult], float],
) -> list[float]:
    """``value`` of the ``top`` (scenario, variant) runs over the ``bottom`` ones', round by round
    (the median of each, when a round ran them more than once)."""
    ratios: list[float] = []
    for round_number in sorted({r.round for r in results}):
        ups = [r for r in runs_of(results, *top) if r.round == round_number]
        downs = [r for r in runs_of(results, *bottom) if r.round == round_number]
        if ups and downs:
            ratios.append(median_of(ups, value) / median_of(downs, value))
    return ratios


def ratio_of_medians(
    results: list[RunResult],
    top: tuple[str, str],
    bottom: tuple[str, str],
    value: Callable[[RunResult], float],
) -> float:
    return median_of(runs_of(results, *top), value) / median_of(runs_of(results, *bottom), value)


def verdict(passed: bool) -> str:
    return "met" if passed else "NOT met"


def target_row(name: str, passed: bool | None, figures: str) -> str:
    return f"| {name} | {'not run' if passed is None else verdict(passed)} | {figures} |"


def wall_of(run: RunResult) -> float:
    return run.wall


def cpu_of(run: RunResult) -> float:
    return run.cpu_per_request


def targets(results: list[RunResult], args: argparse.Namespace) -> list[str]:
    rows = ["| Target | Result | Figures |", "|---|---|---|"]
    fleet = {"same": "the same trace", "split": "disjoint quarters"}
    for scenario, what in fleet.items():
        name = f"{args.processes} processes x {what}, leases on: loads <= {LOADS_TARGET:g} x unique keys"
        ratios = [r.load_ratio for r in runs_of(results, scenario, "leases")]
        if not ratios:
            rows.append(target_row(name, None, "not selected"))
            continue
        off = [r.load_ratio for r in runs_of(results, scenario, "off")]
        figures = f"{listed(ratios, ratio3)} (every round); leases off: {listed(off, ratio3)}"
        rows.append(target_row(name, max(ratios) <= LOADS_TARGET, figures))
    alone = ("alone", "leases")
    for scenario, what in fleet.items():
        name = (
            f"{args.processes} processes x {what}, leases on: time <= {TIME_TARGET:g} x one process "
            "alone (leases on)"
        )
        if not runs_of(results, scenario, "leases") or not runs_of(results, *alone):
            rows.append(target_row(name, None, "not selected"))
            continue
        pooled = ratio_of_medians(results, (scenario, "leases"), alone, wall_of)
        rounds = per_round_ratios(results, (scenario, "leases"), alone, wall_of)
        against_off = ratio_of_medians(results, (scenario, "leases"), ("alone", "off"), wall_of)
        top = median_of(runs_of(results, scenario, "leases"), wall_of)
        bottom = median_of(runs_of(results, *alone), wall_of)
        figures = (
            f"{ratio_text(pooled)} (medians {seconds_text(top)} s / {seconds_text(bottom)} s); per round "
            f"{listed(rounds, ratio_text)}; against one process with leases off: {ratio_text(against_off)}"
        )
        if runs_of(results, scenario, "off") and runs_of(results, "alone", "off"):
            plain = ratio_of_medians(results, (scenario, "off"), ("alone", "off"), wall_of)
            figures += f"; the same ratio with leases off (what this machine allows): {ratio_text(plain)}"
        rows.append(target_row(name, pooled <= TIME_TARGET, figures))
    measures: list[tuple[str, Callable[[RunResult], float], Callable[[float], str], str]] = [
        ("time", wall_of, seconds_text, "s"),
        ("CPU per request", cpu_of, us_text, "µs"),
    ]
    ours, theirs = ("alone", "off"), ("alone", "baseline")
    for label, value, show, unit in measures:
        name = (
            f"one process, leases off: {label} unchanged against {BASELINE_COMMIT} "
            f"(within ±{UNCHANGED_TOLERANCE:.0%})"
        )
        if not runs_of(results, *ours) or not runs_of(results, *theirs):
            rows.append(target_row(name, None, "the baseline not run (--no-baseline, or alone not selected)"))
            continue
        pooled = ratio_of_medians(results, ours, theirs, value)
        rounds = per_round_ratios(results, ours, theirs, value)
        top = median_of(runs_of(results, *ours), value)
        bottom = median_of(runs_of(results, *theirs), value)
        figures = (
            f"ratio {ratio3(pooled)} (medians {show(top)} {unit} / {show(bottom)} {unit}); "
            f"per round {listed(rounds, ratio3)}"
        )
        rows.append(target_row(name, abs(pooled - 1) <= UNCHANGED_TOLERANCE, figures))
    return rows


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model or platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def long_wait_notes(r: RunResult, where: str, examples: int = 3) -> list[str]:
    """The requests that waited for most of a lease, and the loads of their keys."""
    waits = sorted(
        ((p.index, key, asked, latency) for p in r.processes for key, asked, latency in p.long_waits),
        key=lambda wait: -wait[3],
    )
    if not waits:
        return []
    loads: dict[int, list[str]] = {}
    for p in r.processes:
        for key, moment, state in zip(p.loaded, p.load_times, p.breaker_at_load, strict=True):
            loads.setdefault(key, []).append(f"process {p.index} at {moment:.2f} s (breaker {state})")
    shown = "; ".join(
        f"key {key}: asked by process {index} at {asked:.2f} s, answered {latency:.2f} s later, loaded by "
        f"{', '.join(loads.get(key, ['no process']))}"
        for index, key, asked, latency in waits[:examples]
    )
    keys = len({key for _, key, _, _ in waits})
    return [
        f"- {where}: {len(waits):,} requests ({keys:,} keys) took more than {LONG_WAIT:g} s (the lease is "
        f"{LEASE.total_seconds():g} s); the slowest: {shown}."
    ]


def notes(results: list[RunResult]) -> list[str]:
    """What a reader should know besides the table: keys loaded twice with leases, leftovers, errors."""
    lines: list[str] = []
    for r in results:
        where = f"round {r.round}, {r.scenario}, {VARIANTS[r.variant]}"
        errors = sum(p.errors for p in r.processes)
        wrong = sum(p.wrong for p in r.processes)
        if errors or wrong:
            first = next((p.first_error for p in r.processes if p.first_error), "")
            lines.append(
                f"- {where}: {errors:,} caller errors, {wrong:,} wrong values; first: `{first[:200]}`."
            )
        if r.variant == "leases":
            twice = r.loaded_more_than_once()
            if twice:
                sample = ", ".join(f"{key} ({n}x)" for key, n in twice.most_common(5))
                extra = sum(twice.values()) - len(twice)
                fail_open = whole(r.counter("lease_fail_open_count"))
                fenced = whole(r.counter("lease_fenced_count"))
                broken = r.loads_while_breaker_not_closed(twice.keys())
                lines.append(
                    f"- {where}: {len(twice):,} keys loaded more than once ({extra:,} extra loads), e.g. "
                    f"{sample}; of their {sum(twice.values()):,} loads, {broken:,} began while that "
                    f"process's Redis breaker was open or half-open (no lease asked). "
                    f"lease_fail_open_count {fail_open}, lease_fenced_count {fenced}, Redis failures "
                    f"(errors and deadlines passed) {sum(p.storage_failures for p in r.processes):,}, "
                    f"breaker opened {sum(p.breaker_opened for p in r.processes):,} time(s)."
                )
            lines += long_wait_notes(r, where)
            if any(p.subscribed is False for p in r.processes):
                lines.append(f"- {where}: a process started before its lease notices' subscription was up.")
        if r.marks_left:
            lines.append(f"- {where}: {r.marks_left:,} lease marks left in Redis after the run.")
        if r.redis_keys != r.unique_keys + len(r.processes):
            lines.append(
                f"- {where}: {r.redis_keys:,} keys in Redis after the run, not the {r.unique_keys:,} "
                f"unique keys plus {len(r.processes)} warm-up key(s)."
            )
        if not all(p.settled for p in r.processes):
            lines.append(f"- {where}: write-backs still running {SETTLE_TIMEOUT:g} s after the last answer.")
    logged = [line for r in results for line in r.stderr]
    if logged:
        lines.append(
            f"- The children logged {len(logged):,} line(s) to stderr; the first: `{logged[0][:200]}`."
        )
    return lines


def report(
    results: list[RunResult],
    args: argparse.Namespace,
    unique: int,
    wall_seconds: float,
    sources: tuple[SourceState, SourceState],
) -> str:
    rounds = len({r.round for r in results})
    setup = (
        f"{rounds} round(s); the invocation took {wall_seconds:.0f} s. Trace: the first "
        f"{args.requests:,} keys of `zipf.py`'s trace ({unique:,} unique). Each process: [local://tlfu "
        f"size {LOCAL_SIZE:,}, Redis on loopback (port {args.redis_port}, pool 100)], ttl 10 min on both, "
        f"{args.workers:,} workers taking the next request from one iterator, source "
        f"`asyncio.sleep({args.load_ms:g} ms)`; a fresh key prefix per run, its keys deleted after it. "
        f"The processes of a run start together (a wall-clock start time sent to all once each is warm). "
        f"Time: from that start to the last answer, the slowest process's. CPU: user + system of every "
        f"process, from the start until its write-backs ended, per request served. Latency: every "
        f"request, every process pooled. Leases on: `Meta.lease = 10 s`. Ours: {sources[0].describe()}. "
        f"{BASELINE_COMMIT}: the commit "
        f"before leases (a worktree, PYTHONPATH). The variants of a scenario alternate, their order "
        f"rotated every round. Median over the rounds (range). Machine: {machine()}, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d')}; shared and noisy: {args.processes} "
        f"busy processes share {os.cpu_count()} cores, only ratios within this invocation hold."
    )
    lines = [BEGIN, "## Fleet: leases (`benchmarks/fleet.py`)", "", setup, ""]
    lines += [
        "| scenario | variant | loads | unique keys | loads / unique | keys loaded > once | time (s) "
        "| CPU µs / request | p50 ms | p99 ms | max ms | Redis failures | breaker opened | leases granted "
        "| waited | fail-open | fenced |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios(args):
        for variant in VARIANTS:
            runs = runs_of(results, scenario.name, variant)
            if not runs:
                continue
            leased = variant == "leases"

            def lease_cell(name: str, runs: list[RunResult] = runs, leased: bool = leased) -> str:
                return median_range([r.counter(name) for r in runs], whole) if leased else "-"

            cells = [
                scenario.label(args.requests),
                VARIANTS[variant],
                median_range([r.loads for r in runs], whole),
                median_range([r.unique_keys for r in runs], whole),
                median_range([r.load_ratio for r in runs], ratio3),
                median_range([len(r.loaded_more_than_once()) for r in runs], whole),
                median_range([r.wall for r in runs], seconds_text),
                median_range([r.cpu_per_request for r in runs], us_text),
                *(median_range([r.latency()[i] for r in runs], ms_text) for i in range(3)),
                median_range([sum(p.storage_failures for p in r.processes) for r in runs], whole),
                median_range([sum(p.breaker_opened for p in r.processes) for r in runs], whole),
                lease_cell("lease_count"),
                lease_cell("lease_wait_count"),
                lease_cell("lease_fail_open_count"),
                lease_cell("lease_fenced_count"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Redis commands per run, as the server counts them (`INFO commandstats` before and after; the "
        "commands a Lua script runs counted too, under their own names; anything else this server "
        "served meanwhile included):",
        "",
        "| scenario | variant | EVAL | MGET | SET | PUBLISH | all commands | per request |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios(args):
        for variant in VARIANTS:
            runs = runs_of(results, scenario.name, variant)
            if not runs:
                continue
            cells = [
                scenario.label(args.requests),
                VARIANTS[variant],
                *(median_range([r.commands[name] for r in runs], whole) for name in COMMANDS_SHOWN),
                median_range([sum(r.commands.values()) for r in runs], whole),
                median_range([sum(r.commands.values()) / r.requests for r in runs], ratio_text),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets (the leases issue):", "", *targets(results, args)]
    found = notes(results)
    if sources[0].digest != sources[1].digest:
        found.insert(
            0,
            f"- The library's sources changed while this ran (from {sources[0].describe()} to "
            f"{sources[1].describe()}): the runs may mix versions; run it again.",
        )
    if found:
        lines += ["", "Notes:", "", *found]
    lines.append(END)
    return "\n".join(lines)


# ---------------------------------------------------------------- the driver


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=None, help="trace length (50,000; --quick: 10,000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a smaller check: 10,000 requests, 1 round")
    parser.add_argument("--workers", type=int, default=1_000, help="worker tasks per process")
    parser.add_argument("--processes", type=int, default=4, help="processes of the fleet scenarios")
    parser.add_argument("--load-ms", type=float, default=5.0, help="how long the source takes, ms")
    parser.add_argument("--redis-port", type=int, default=6379, help="the Redis on 127.0.0.1 (db 0)")
    parser.add_argument("--only", choices=["alone", "same", "split"], action="append", default=None)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"runs of one process, leases off and {BASELINE_COMMIT}, per round (3; --quick: 1)",
    )
    parser.add_argument("--no-baseline", action="store_true", help=f"skip the {BASELINE_COMMIT} runs")
    parser.add_argument("--baseline-dir", type=Path, default=Path(tempfile.gettempdir()) / "cacheme-base")
    parser.add_argument("--baseline-commit", default=BASELINE_COMMIT, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print the report, leave RESULTS.md alone")
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep the children's stderr in this directory"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = 10_000 if args.quick else 50_000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if (
        min(args.requests, args.rounds, args.workers, args.repeats) < 1
        or args.processes < 2
        or args.load_ms < 0
    ):
        parser.error(
            "--requests, --rounds, --workers and --repeats must be at least 1, --processes at least 2"
        )
    return args


def plan(args: argparse.Namespace) -> Iterator[tuple[int, Scenario, str]]:
    """(round, scenario, variant) of every run, in order: each scenario's variants rotated per round."""
    for round_number in range(1, args.rounds + 1):
        for scenario in scenarios(args):
            if args.only is not None and scenario.name not in args.only:
                continue
            variants = ["leases", "off"]
            if scenario.name == "alone" and not args.no_baseline:
                variants.append("baseline")
            turn = (round_number - 1) % len(variants)
            for variant in variants[turn:] + variants[:turn]:
                yield round_number, scenario, variant
            if scenario.name == "alone" and not args.no_baseline:
                # More pairs of the short runs that the "unchanged" target compares, alternating.
                pair = ["off", "baseline"]
                for repeat in range(1, args.repeats):
                    turn = (round_number + repeat) % 2
                    for variant in pair[turn:] + pair[:turn]:
                        yield round_number, scenario, variant


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child is not None:
        await child(json.loads(args.child))
        return
    begun = time.perf_counter()
    if "lease" not in cacheme.node.META_OPTIONS:
        raise SystemExit("this cacheme has no Meta.lease: run the driver with the cacheme of this repository")
    baseline = None
    if not args.no_baseline and (args.only is None or "alone" in args.only):
        baseline = baseline_worktree(args.baseline_dir.resolve(), args.baseline_commit)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    keys = trace_keys(args.requests)
    unique = len(set(keys))
    sources_before = source_state()
    print(f"ours: {sources_before.describe()}", flush=True)
    admin = AdminClient(args.redis_port)
    results: list[RunResult] = []
    try:
        admin.command("PING")
        with tempfile.TemporaryDirectory() as directory:
            workdir = Path(directory)
            trace = workdir / "trace.json"
            trace.write_text(json.dumps(keys))
            for round_number, scenario, variant in plan(args):
                print(
                    f"round {round_number}: {scenario.label(args.requests)}, {VARIANTS[variant]} ...",
                    flush=True,
                )
                result = await run_once(
                    scenario, variant, round_number, trace, keys, workdir, admin, baseline, args
                )
                latency = result.latency()
                print(
                    f"  loads {result.loads:,} / {result.unique_keys:,} unique ({result.load_ratio:.3f}), "
                    f"time {result.wall:.2f} s, CPU {result.cpu_per_request * 1e6:.0f} µs/request, "
                    f"p50 {latency[0] * 1000:.1f} ms, p99 {latency[1] * 1000:.1f} ms",
                    flush=True,
                )
                for line in result.stderr[:5]:
                    print(f"  {line}", flush=True)
                results.append(result)
    finally:
        admin.close()
    sources_after = source_state()
    if sources_after.digest != sources_before.digest:
        print("warning: the library's sources changed during the run", flush=True)
    text = report(results, args, unique, time.perf_counter() - begun, (sources_before, sources_after))
    print(text)
    if not args.no_write:
        write_report(text, BEGIN, END)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
