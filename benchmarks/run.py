"""Run the benchmarks: ours and the peers alternately, one subprocess per run, a table at the end.

    python benchmarks/run.py                 # everything (trace at 1k/10k/100k, batch at 1k/10k, micro)
    python benchmarks/run.py --quick         # 20,000 requests, 1k workers: a fast check
    python benchmarks/run.py --workloads trace --concurrency 1000 --libs ours,cacheme030
    python benchmarks/run.py --workloads trace --concurrency 10000 --libs ours,null --rounds 3 --gc-freeze

Our cacheme runs in this interpreter's environment (it must have cacheme-core, cacheme-local and
cacheme-redis installed), and so do the two floor caches of run_null.py (``null``: a dict and in-flight
futures; ``null-safe``: each load in its own task, a future per waiter), against which every trace and
batch row is read, next to the simulated ideal of floor.py. aiocache/cashews and the original cacheme
0.3.0 run in environments of their own, built under benchmarks/ on first use (see envs.py). The driver
starts a private redis-server on a free loopback port, empties it and zeroes its command statistics
before each run, and reads the commands each run sent from the server (INFO commandstats). Results go
to benchmarks/RESULTS.md (and raw JSON to benchmarks/.work/results.json). With ``--rounds N`` everything
is run N times, the libraries alternating within each round, and each (workload, workers, variant) is
reported by its median run: the run with the median time (micro: the median ns of a local hit); for an
even N the lower of the two middle runs, so that the figures shown (time, commands, loads) all come from
one real run. ``--gc-freeze`` adds, next to each of ``local``, ``redis`` and ``chain`` of ours, the same
variant with ``gc.freeze()`` called after the set-up (an application-side recipe; the library never
touches gc). Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import envs  # noqa: E402
import floor  # noqa: E402
import zipf  # noqa: E402
from redis_server import RedisServer  # noqa: E402

WORK = HERE / ".work"
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_JSON = WORK / "results.json"

# Commands a client sends to set up its connections: not part of a library's traffic.
SETUP_COMMANDS = ("hello", "ping", "client|", "config|", "info", "select", "script|load")


@dataclass(frozen=True)
class Variant:
    label: str  # as in the original README: "-2" is the second flavour of a library
    lib: str  # ours | null | cacheme030 | aiocache | cashews
    variant: str
    description: str


NULL = "null"
NULL_SAFE = "null-safe"
FLOOR_VARIANTS = [
    Variant(
        NULL, "null", "null", "floor: a dict + in-flight futures, the load inline in the first requester"
    ),
    Variant(
        NULL_SAFE,
        "null",
        "null-safe",
        "floor: a dict, each load in its own task, a future per waiting request (cancellation-safe "
        "singleflight, the least an asyncio cache with our guarantees must do)",
    ),
]
TRACE_VARIANTS = [
    *FLOOR_VARIANTS,
    Variant("cacheme local", "ours", "local", "ours: [local]"),
    Variant("cacheme", "ours", "redis", "ours: Redis"),
    Variant("cacheme 0.3.0", "cacheme030", "redis", "original cacheme 0.3.0: Redis"),
    Variant("cacheme-2", "ours", "chain", "ours: [local, Redis]"),
    Variant("cacheme 0.3.0-2", "cacheme030", "chain", "original cacheme 0.3.0: [local, Redis]"),
    Variant("cacheme memoize", "ours", "memoize", "ours: Redis through Memoize"),
    Variant("aiocache", "aiocache", "cached", "aiocache `cached` on Redis"),
    Variant("aiocache-2", "aiocache", "stampede", "aiocache `cached_stampede` on Redis"),
    Variant("cashews", "cashews", "cache", "cashews `cache` on Redis"),
    Variant("cashews-2", "cashews", "lock", "cashews `cache(lock=True)` on Redis"),
]
BATCH_VARIANTS = [
    *FLOOR_VARIANTS,
    Variant("cacheme local", "ours", "local", "ours: get_all on [local]"),
    Variant("cacheme", "ours", "redis", "ours: get_all on Redis"),
    Variant("cacheme 0.3.0", "cacheme030", "redis", "original cacheme 0.3.0: get_all on Redis"),
]
MICRO_VARIANTS = [
    Variant("cacheme", "ours", "local", "ours"),
    Variant("cacheme 0.3.0", "cacheme030", "local", "original cacheme 0.3.0"),
]
# Ours with gc.freeze() after the set-up (--gc-freeze): the variants of ours it applies to.
FREEZE_OF = ("local", "redis", "chain")
SCRIPTS = {
    "ours": "run_ours.py",
    "null": "run_null.py",
    "base": "run_ours.py",
    "cacheme030": "run_cacheme030.py",
    "aiocache": "run_aiocache.py",
    "cashews": "run_cashews.py",
}
ENVIRONMENT_OF = {"cacheme030": "cacheme030", "aiocache": "peers", "cashews": "peers"}
LIBS = ["ours", "null", "cacheme030", "aiocache", "cashews"]


@dataclass
class Run:
    workload: str
    workers: int
    variant: Variant
    result: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    status: str = "pending"  # ok | timeout | error


# ---------------------------------------------------------------- progress bar


class Progress:
    """One line on stderr: a bar, the run in progress, its time, the total time."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()

    def show(self, label: str, run_started: float) -> None:
        if not self.tty:
            return
        width = 30
        filled = width * self.done // max(1, self.total)
        bar = "#" * filled + "-" * (width - filled)
        now = time.monotonic()
        line = (
            f"\r[{bar}] {self.done}/{self.total}  {label:<34.34} {now - run_started:6.1f}s"
            f"  total {int(now - self.started) // 60}:{int(now - self.started) % 60:02d}"
        )
        sys.stderr.write(line)
        sys.stderr.flush()

    def finish_run(self, label: str, outcome: str) -> None:
        self.done += 1
        if self.tty:
            sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.write(f"[{self.done}/{self.total}] {label}: {outcome}\n")
        sys.stderr.flush()


# ---------------------------------------------------------------- running


def runner_python(lib: str, ours_python: Path) -> Path:
    if lib in ("ours", "null", "base"):
        return ours_python
    return envs.ensure(ENVIRONMENT_OF[lib])


def run_one(
    run: Run,
    python: Path,
    server: RedisServer,
    keys: Path | None,
    args: argparse.Namespace,
    progress: Progress,
) -> None:
    command = [
        str(python),
        str(HERE / SCRIPTS[run.variant.lib]),
        "--workload", run.workload,
        "--variant", run.variant.variant,
        "--port", str(server.port),
        "--workers", str(run.workers),
        "--number", str(args.micro_number),
        "--repeat", str(args.micro_repeat),
    ]  # fmt: skip
    if keys is not None:
        command += ["--keys", str(keys)]
    server.admin.reset()
    label = f"{run.workload} {run.workers // 1000}k {run.variant.label}"
    if run.workload == "micro":
        label = f"micro {run.variant.label}"
    started = time.monotonic()
    with open(WORK / "runner-stderr.log", "ab") as errors:
        errors.write(f"\n==== {label}\n".encode())
        errors.flush()
        env = None
        if run.variant.lib == "base":  # the baseline's sources ahead of ours (same module names)
            env = {**os.environ, "PYTHONPATH": args.baseline_path}
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, cwd=HERE, start_new_session=True, env=env
        )
        while True:
            try:
                out, _ = process.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                progress.show(label, started)
                if time.monotonic() - started > args.timeout:
                    os.killpg(process.pid, 9)
                    process.communicate()
                    run.status = "timeout"
                    run.commands = server.admin.command_counts()
                    progress.finish_run(label, f"timeout after {args.timeout:.0f}s")
                    return
    run.commands = server.admin.command_counts()
    lines = out.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        run.status = "error"
        progress.finish_run(label, f"error (exit {process.returncode}, see {WORK / 'runner-stderr.log'})")
        return
    run.result = json.loads(lines[-1])
    run.status = "ok"
    progress.finish_run(label, summary(run))


def summary(run: Run) -> str:
    result = run.result
    if run.workload == "micro":
        return f"get hit {result['get_hit_ns']:.0f} ns, get_all of 20 hits {result['get_all_20_ns']:.0f} ns"
    return (
        f"{result['elapsed']:.2f}s, loads {result['loads']} / {result['unique']} unique, "
        f"{traffic_total(run.commands)} Redis commands"
    )


def traffic(commands: dict[str, int]) -> dict[str, int]:
    return {name: calls for name, calls in commands.items() if not name.startswith(SETUP_COMMANDS)}


def traffic_total(commands: dict[str, int]) -> int:
    return sum(traffic(commands).values())


def frozen(variant: Variant) -> Variant:
    """``variant`` of ours with gc.freeze() after the set-up (run_ours.py's ``-freeze`` variants)."""
    return Variant(
        f"{variant.label} + gc.freeze()",
        variant.lib,
        f"{variant.variant}-freeze",
        f"{variant.description}, gc.collect() and gc.freeze() after the set-up",
    )


def at_baseline(variant: Variant, commit: str) -> Variant:
    """``variant`` of ours run with the cacheme of ``commit`` (``--baseline``)."""
    return Variant(
        f"{variant.label} @{commit}", "base", variant.variant, f"{variant.description}, at {commit}"
    )


def selected(
    variants: list[Variant], libs: list[str], gc_freeze: bool = False, baseline: str | None = None
) -> list[Variant]:
    """The variants of ``libs``; with ``gc_freeze``, each of ours in FREEZE_OF followed by its frozen
    twin; with ``baseline``, each of those followed by the same at that commit."""
    chosen: list[Variant] = []
    for v in variants:
        if v.lib in libs:
            chosen.append(v)
            if gc_freeze and v.lib == "ours" and v.variant in FREEZE_OF:
                chosen.append(frozen(v))
            if baseline and v.lib == "ours" and v.variant in FREEZE_OF:
                chosen.append(at_baseline(v, baseline))
    return chosen


def plan(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for _ in range(args.rounds):
        if "micro" in args.workloads:
            runs += [Run("micro", 0, v) for v in selected(MICRO_VARIANTS, args.libs, False, args.baseline)]
        if "trace" in args.workloads:
            trace = selected(TRACE_VARIANTS, args.libs, args.gc_freeze, args.baseline)
            for workers in args.concurrency:
                runs += [Run("trace", workers, v) for v in trace]
        if "batch" in args.workloads:
            batch = selected(BATCH_VARIANTS, args.libs, args.gc_freeze, args.baseline)
            for workers in args.batch_concurrency:
                runs += [Run("batch", workers, v) for v in batch]
    return runs


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def median(runs: list[Run]) -> list[Run]:
    """Of repeated rounds, keep for each (workload, workers, variant) its median successful run.

    Runs are ranked by time (micro: ns per local hit); of an even number the lower of the two middle ones
    is kept, a real run, so that its commands and loads go with its time. A variant with no successful
    run is reported by its last run (timeout or error).
    """
    groups: dict[tuple[str, int, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.workload, run.workers, run.variant.label), []).append(run)
    kept: list[Run] = []
    for group in groups.values():
        ok = sorted((run for run in group if run.status == "ok"), key=measure)
        kept.append(ok[(len(ok) - 1) // 2] if ok else group[-1])
    return kept


def measure(run: Run) -> float:
    """What the rounds of a run are ranked by: its time, or for micro the ns of a local hit."""
    if run.workload == "micro":
        return float(run.result["get_hit_ns"])
    return float(run.result["elapsed"])


# The 0.3.0 variant each of ours is read against ("vs 0.3.0"); 0.3.0 has no local-only flavour.
REFERENCE_OF = {
    "redis": "cacheme 0.3.0",
    "memoize": "cacheme 0.3.0",
    "chain": "cacheme 0.3.0-2",
    "memoize-chain": "cacheme 0.3.0-2",
}


def reference(runs: list[Run], run: Run) -> Run | None:
    """The cacheme 0.3.0 run to compare ``run`` of ours with (same workload, workers and chain)."""
    label = REFERENCE_OF.get(run.variant.variant.removesuffix("-freeze"))
    return None if label is None else find(runs, run.workload, run.workers, label)


def ratio(a: float, b: float | None) -> str:
    """``a / b`` to two places, or blank when there is no ``b``."""
    return f"{a / b:.2f}" if b else ""


def load_table(runs: list[Run], workload: str, workers: int, ideal: float | None) -> list[str]:
    """One row per variant: time, its ratios to the floors (null, null-safe, ideal) and to 0.3.0,
    the Redis commands, loads against unique keys."""
    rows = [r for r in runs if r.workload == workload and r.workers == workers]
    if not rows:
        return []
    null, null_safe = find(runs, workload, workers, NULL), find(runs, workload, workers, NULL_SAFE)
    null_time = null.result["elapsed"] if null else None
    null_safe_time = null_safe.result["elapsed"] if null_safe else None
    lines = [
        "| Library | Time | vs null | vs null-safe | vs ideal | vs 0.3.0 | Redis GET | MGET | SET | other "
        "| total | Loads | Unique keys | Notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in rows:
        calls = traffic(run.commands)
        get, mget, set_ = calls.pop("get", 0), calls.pop("mget", 0), calls.pop("set", 0)
        other = ", ".join(f"{name} {count}" for name, count in sorted(calls.items())) or "0"
        total = get + mget + set_ + sum(calls.values())
        if run.status != "ok":
            lines.append(
                f"| {run.variant.label} | {run.status} | | | | | {get} | {mget} | {set_} | {other} "
                f"| {total} | | | |"
            )
            continue
        result = run.result
        elapsed = result["elapsed"]
        ref = reference(runs, run) if run.variant.lib == "ours" else None
        ratios = " | ".join(
            ratio(elapsed, b)
            for b in (null_time, null_safe_time, ideal, ref.result["elapsed"] if ref else None)
        )
        notes = []
        if result.get("failed"):
            notes.append(f"{result['failed']} failed ({result['first_error']})")
        if result.get("wrong"):
            notes.append(f"{result['wrong']} wrong answers")
        if result.get("storage_errors"):
            notes.append(f"{result['storage_errors']} storage errors")
        entries = result.get("local_entries")
        if entries is not None and entries < result["unique"]:
            notes.append(f"local tier ended with {entries} entries: it evicted")
        lines.append(
            f"| {run.variant.label} | {elapsed:.2f} s | {ratios} | {get} | {mget} | {set_} | {other} "
            f"| {total} | {result['loads']} | {result['unique']} | {'; '.join(notes)} |"
        )
    return lines


MICRO_ROWS = [
    ("get_hit_ns", "local hit through `get` (same node)"),
    ("get_hit_new_node_ns", "local hit through `get` (new node per call)"),
    ("theine_get_ns", "raw theine `get` of the same key"),
    ("get_all_20_ns", "`get_all` of 20 local hits"),
    ("get_hit_dict_tier_ns", "local hit through `get`, plain-dict tier (engine alone)"),
    ("get_all_20_dict_tier_ns", "`get_all` of 20 hits, plain-dict tier (engine alone)"),
]


def micro_table(runs: list[Run]) -> list[str]:
    def first(lib: str) -> Run | None:
        return next(
            (r for r in runs if r.workload == "micro" and r.variant.lib == lib and r.status == "ok"), None
        )

    ours, base, theirs = first("ours"), first("base"), first("cacheme030")
    if ours is None and theirs is None:
        return []
    base_title = f" | {base.variant.label.rsplit(' ', 1)[-1]}" if base else ""
    lines = [
        f"| ns per operation | cacheme (ours){base_title} | cacheme 0.3.0 | ratio |",
        "|---|---:|---:|---:|" + ("---:|" if base else ""),
    ]

    def shown(run: Run | None, key: str) -> str:
        value = run.result.get(key) if run else None
        return "" if value is None else f"{value:.0f}"

    for key, title in MICRO_ROWS:
        a = ours.result.get(key) if ours else None
        b = theirs.result.get(key) if theirs else None
        ratio = f"{a / b:.2f}" if a and b else ""
        before = f" | {shown(base, key)}" if base else ""
        lines.append(f"| {title} | {shown(ours, key)}{before} | {shown(theirs, key)} | {ratio} |")
    return lines


def find(runs: list[Run], workload: str, workers: int, label: str) -> Run | None:
    for run in runs:
        if (run.workload, run.workers, run.variant.label) == (
            workload,
            workers,
            label,
        ) and run.status == "ok":
            return run
    return None


# Ours against the null-safe floor of the same invocation: (trace workers, label, at most this many times).
VS_NULL_SAFE = [
    (10_000, "cacheme local", 1.4),
    (10_000, "cacheme", 2.0),
    (10_000, "cacheme-2", 1.8),
    (100_000, "cacheme local", 1.3),
    (100_000, "cacheme", 1.5),
    (100_000, "cacheme-2", 1.5),
]
# Ours against the simulated ideal: (workload, workers, label, at most this many times).
VS_IDEAL = [
    ("trace", 1_000, "cacheme", 1.10),
    ("trace", 1_000, "cacheme-2", 1.10),
    ("batch", 1_000, "cacheme", 1.6),
    ("batch", 1_000, "cacheme local", 1.6),
]
# Ours' micro figures: (result key, title, at most this many ns).
MICRO_LIMITS = [
    ("get_hit_ns", "local hit (same node)", 300.0),
    ("get_hit_new_node_ns", "local hit (new node per call)", 600.0),
]


def targets(runs: list[Run], floors: dict[str, float], every: list[Run]) -> list[str]:
    """The speed asked for (issue 6 and the floors), checked on this run's figures: ``runs`` (each
    variant's median run), ``floors`` (the ideal times), ``every`` (every run of every round, for the
    loads). Ours is read against the null-safe run of the same invocation and against the ideal."""
    lines: list[str] = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        mark = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        lines.append(f"| {name} | {mark} | {detail} |")

    for workers, label, limit in VS_NULL_SAFE:
        name = f"trace {workers // 1000}k, {label}: time <= {limit}x null-safe"
        ours, floor_run = find(runs, "trace", workers, label), find(runs, "trace", workers, NULL_SAFE)
        if ours and floor_run:
            a, b = ours.result["elapsed"], floor_run.result["elapsed"]
            check(name, a <= limit * b, f"{a:.2f} s vs {b:.2f} s ({a / b:.2f}x)")
        else:
            check(name, None, "not run")
    for workload, workers, label, limit in VS_IDEAL:
        name = f"{workload} {workers // 1000}k, {label}: time <= {limit}x ideal"
        ours, ideal = find(runs, workload, workers, label), floors.get(f"{workload} {workers}")
        if ours and ideal:
            a = ours.result["elapsed"]
            check(name, a <= limit * ideal, f"{a:.2f} s vs {ideal:.2f} s ({a / ideal:.2f}x)")
        else:
            check(name, None, "not run")
    for label, theirs_label in (("cacheme", "cacheme 0.3.0"), ("cacheme-2", "cacheme 0.3.0-2")):
        ours, theirs = find(runs, "trace", 1000, label), find(runs, "trace", 1000, theirs_label)
        if ours and theirs:
            ca, cb = traffic_total(ours.commands), traffic_total(theirs.commands)
            check(f"trace 1k, {label}: Redis commands <= 0.3.0", ca <= cb, f"{ca} vs {cb}")
    for workers in (1000, 10000):
        ours, theirs = find(runs, "batch", workers, "cacheme"), find(runs, "batch", workers, "cacheme 0.3.0")
        if ours and theirs:
            a, b = ours.result["elapsed"], theirs.result["elapsed"]
            check(
                f"batch {workers // 1000}k: time <= 1/2 of 0.3.0",
                a <= b / 2,
                f"{a:.2f} s vs {b:.2f} s ({a / b:.2f})",
            )
            ca, cb = traffic_total(ours.commands), traffic_total(theirs.commands)
            check(f"batch {workers // 1000}k: Redis commands <= 0.3.0", ca <= cb, f"{ca} vs {cb}")
    loading = [
        r
        for r in every
        if r.variant.lib in ("ours", "null") and r.workload in ("trace", "batch") and r.status == "ok"
    ]
    if loading:
        bad = [
            f"{r.workload} {r.workers} {r.variant.label}: {r.result['loads']}/{r.result['unique']}"
            for r in loading
            if r.result["loads"] != r.result["unique"]
        ]
        check(
            "ours and the floors: loads == unique keys (every run)",
            not bad,
            "; ".join(bad) or f"{len(loading)} runs",
        )
    ours = find(runs, "micro", 0, "cacheme")
    for key, title, limit in MICRO_LIMITS:
        name = f"micro: {title} <= {limit:.0f} ns"
        if ours and key in ours.result:
            a = ours.result[key]
            check(name, a <= limit, f"{a:.0f} ns")
        else:
            check(name, None, "not run")
    theirs = find(runs, "micro", 0, "cacheme 0.3.0")
    if ours and theirs:
        for key, title in (("get_hit_ns", "local hit"), ("get_all_20_ns", "get_all of 20 local hits")):
            a, b = ours.result[key], theirs.result[key]
            check(f"micro: {title} no slower than 0.3.0", a <= b, f"{a:.0f} ns vs {b:.0f} ns ({a / b:.2f})")
    return ["| Target | Result | Figures |", "|---|---|---|", *lines]


def report(runs: list[Run], info: dict[str, Any], args: argparse.Namespace) -> str:
    kept = median(runs)
    out = [
        "# Benchmark results",
        "",
        f"Run on {info['date']}: {info['cpu']}, {info['cores']} cores, {info['os']}, "
        f"Python {info['python']}, "
        f"Redis {info['redis']} (a private server on loopback).",
        "",
        "Versions: " + ", ".join(f"{name} {version}" for name, version in info["versions"].items()) + ".",
        "",
        f"Command: `{' '.join(['python benchmarks/run.py', *args.argv])}`",
        "",
        f"Trace: {info['trace_requests']:,} requests, {info['trace_unique']:,} unique keys "
        "(Zipf s=1.001, v=10, "
        f"imax=200,000). Batch: {info['batch_calls']:,} `get_all` calls of 20 distinct keys, "
        f"{info['batch_unique']:,} unique (Zipf s=1.0001). Loader: 0.1 s sleep (batch: one 0.1 s sleep per "
        "`load_all`). Redis behind a 100-connection blocking pool. Time runs until the last answer and any "
        "write the library left running. Redis commands are read on the server (connection set-up commands "
        f"left out). Rounds: {args.rounds}; each variant is shown by its median run (ranked by time, micro "
        "by the ns of a local hit; of an even number of rounds the lower middle run), not the fastest. "
        "Ours, the floors and the peers alternate within each concurrency of each round.",
        "",
        "Floors: every trace and batch table reads each row against two reference caches run in the same "
        "harness and the same invocation (`run_null.py`, our interpreter): **null**, a dict and in-flight "
        "futures with the load inline in the first requester, and **null-safe**, a dict with each load in "
        "its own task and a future per waiting request (cancellation-safe singleflight, the least an asyncio "
        "cache with our guarantees must do); and against the ideal, the time `floor.py` simulates for a "
        "cache that costs nothing but its loads. `vs null`, `vs null-safe`, `vs ideal`: the row's time "
        "divided by theirs.",
        "",
    ]
    floors: dict[str, float] = info.get("floors", {})
    target_lines = targets(kept, floors, runs)
    if target_lines:
        out += ["## Targets", "", *target_lines, ""]
    micro = micro_table(kept)
    if micro:
        out += [
            f"## Micro (ns per operation, best of {args.micro_repeat} runs of {args.micro_number:,}; "
            f"the median of {args.rounds} round(s))",
            "",
            *micro,
            "",
        ]
    for workload, concurrency in (("trace", args.concurrency), ("batch", args.batch_concurrency)):
        for workers in concurrency:
            ideal = floors.get(f"{workload} {workers}")
            table = load_table(kept, workload, workers, ideal)
            if table:
                out += [f"## {workload}, {workers:,} workers", ""]
                if ideal is not None:
                    out += [
                        f"Ideal: {ideal:.2f} s (a cache that costs nothing but its loads, simulated by "
                        "`floor.py`).",
                        "",
                    ]
                out += [*table, ""]
    out += ["## Variants", ""]
    out += [f"- **{v.label}**: {v.description}" for v in selected(TRACE_VARIANTS, LIBS, args.gc_freeze)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main


def kept_sections(path: Path) -> str:
    """The sections other benchmarks wrote into ``path`` between their ``<!-- name:begin -->`` and
    ``<!-- name:end -->`` markers (outage.py, fleet.py, memory.py...): kept when this report is written."""
    if not path.exists():
        return ""
    section = re.compile(r"\n<!-- (\w+):begin -->\n.*?\n<!-- \1:end -->\n", flags=re.DOTALL)
    return "".join(match.group(0) for match in section.finditer(path.read_text()))


def baseline_sources(commit: str) -> str:
    """The PYTHONPATH of cacheme's core, local and redis sources at ``commit`` (extracted under .work/)."""
    parts = ["cacheme-core/src", "cacheme-local/src", "cacheme-redis/src"]
    target = WORK / f"baseline-{commit}"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", commit, *parts], cwd=HERE.parent, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return os.pathsep.join(str(target / part) for part in parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", default="micro,trace,batch", help="comma list of micro, trace, batch")
    parser.add_argument(
        "--concurrency", default=None, help="trace workers, comma list (default 1000,10000,100000)"
    )
    parser.add_argument("--batch-concurrency", default=None, help="batch workers (default 1000,10000)")
    parser.add_argument("--libs", default=",".join(LIBS), help=f"comma list of {', '.join(LIBS)}")
    parser.add_argument("--requests", type=int, default=None, help="trace requests (default 200,000)")
    parser.add_argument("--batch-calls", type=int, default=None, help="batch get_all calls (default 10,000)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat everything, alternating; report each variant's median run",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run before it is 'timeout'")
    parser.add_argument("--micro-number", type=int, default=None, help="micro: operations per timed run")
    parser.add_argument("--micro-repeat", type=int, default=None, help="micro: timed runs, best kept")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="also run ours' local, redis and chain with gc.freeze() after the set-up (an application-side "
        "recipe), next to the same variants without it",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="a git commit: each of ours also runs with the cacheme of that commit, alternating",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 requests, 1,000 batch calls, 1k workers")
    parser.add_argument("--ours-python", type=Path, default=Path(sys.executable), help="interpreter for ours")
    parser.add_argument("--output", type=Path, default=RESULTS_MD, help="where the Markdown report goes")
    args = parser.parse_args(argv)
    quick = args.quick
    args.argv = argv
    args.workloads = args.workloads.split(",")
    args.libs = args.libs.split(",")
    unknown = set(args.libs) - set(LIBS)
    if unknown:
        parser.error(f"unknown libs: {', '.join(sorted(unknown))}")
    args.concurrency = [
        int(n) for n in (args.concurrency or ("1000" if quick else "1000,10000,100000")).split(",")
    ]
    args.batch_concurrency = [
        int(n) for n in (args.batch_concurrency or ("1000" if quick else "1000,10000")).split(",")
    ]
    args.baseline_path = baseline_sources(args.baseline) if args.baseline else ""
    args.requests = args.requests or (20_000 if quick else 200_000)
    args.batch_calls = args.batch_calls or (1_000 if quick else 10_000)
    args.micro_number = args.micro_number or (20_000 if quick else 200_000)
    args.micro_repeat = args.micro_repeat or (3 if quick else 7)
    return args


def ideal_times(trace_file: Path, batch_file: Path, args: argparse.Namespace) -> dict[str, float]:
    """The simulated zero-overhead time of each trace and batch run planned, by "workload workers"."""
    trace_keys = json.loads(trace_file.read_text())
    batch_groups = json.loads(batch_file.read_text())
    floors = {f"trace {w}": floor.trace_floor(trace_keys, w) for w in args.concurrency}
    floors.update({f"batch {w}": floor.batch_floor(batch_groups, w) for w in args.batch_concurrency})
    return floors


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    WORK.mkdir(exist_ok=True)
    (WORK / "runner-stderr.log").write_bytes(b"")
    trace_file = WORK / f"trace-{args.requests}.json"
    batch_file = WORK / f"batch-{args.batch_calls}.json"
    trace_unique = zipf.write_trace(trace_file, args.requests)
    batch_unique = zipf.write_batch(batch_file, args.batch_calls)
    libs_used = {run.variant.lib for run in plan(args)}
    pythons = {lib: runner_python(lib, args.ours_python) for lib in libs_used}
    versions = {}
    for lib, distribution in (
        ("ours", "cacheme-core"),
        ("cacheme030", "cacheme"),
        ("aiocache", "aiocache"),
        ("cashews", "cashews"),
    ):
        if lib in pythons:
            name = "cacheme (ours)" if lib == "ours" else distribution
            versions[name] = envs.installed_version(pythons[lib], distribution)
    if "ours" in pythons:
        versions["theine (ours)"] = envs.installed_version(pythons["ours"], "theine")
        versions["redis-py (ours)"] = envs.installed_version(pythons["ours"], "redis")
    if "cacheme030" in pythons:
        versions["theine (0.3.0)"] = envs.installed_version(pythons["cacheme030"], "theine")
        versions["redis-py (0.3.0)"] = envs.installed_version(pythons["cacheme030"], "redis")

    runs = plan(args)
    progress = Progress(len(runs))
    server = RedisServer(WORK / "redis")
    try:
        info: dict[str, Any] = machine()
        info.update(
            redis=server.admin.version(),
            versions=versions,
            trace_requests=args.requests,
            trace_unique=trace_unique,
            batch_calls=args.batch_calls,
            batch_unique=batch_unique,
            floors=ideal_times(trace_file, batch_file, args),
        )
        for run in runs:
            keys = {"trace": trace_file, "batch": batch_file}.get(run.workload)
            run_one(run, pythons[run.variant.lib], server, keys, args, progress)
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what ran", file=sys.stderr)
    finally:
        server.stop()
    RESULTS_JSON.write_text(
        json.dumps(
            {"info": info, "runs": [{**r.__dict__, "variant": r.variant.__dict__} for r in runs]}, indent=1
        )
    )
    text = report([r for r in runs if r.status != "pending"], info, args)
    args.output.write_text(text + kept_sections(args.output))
    print()
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
