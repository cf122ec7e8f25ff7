"""Run the benchmarks: ours and the peers alternately, one subprocess per run, a table at the end.

    python benchmarks/run.py                 # everything (trace at 1k/10k/100k, batch at 1k/10k, micro)
    python benchmarks/run.py --quick         # 20,000 requests, 1k workers: a fast check
    python benchmarks/run.py --workloads trace --concurrency 1000 --libs ours,cacheme030

Our cacheme runs in this interpreter's environment (it must have cacheme-core, cacheme-local and
cacheme-redis installed); aiocache/cashews and the original cacheme 0.3.0 run in environments of their own,
built under benchmarks/ on first use (see envs.py). The driver starts a private redis-server on a free
loopback port, empties it and zeroes its command statistics before each run, and reads the commands each
run sent from the server (INFO commandstats). Results go to benchmarks/RESULTS.md (and raw JSON to
benchmarks/.work/results.json). Stdlib only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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
    lib: str  # ours | cacheme030 | aiocache | cashews
    variant: str
    description: str


TRACE_VARIANTS = [
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
    Variant("cacheme", "ours", "redis", "ours: get_all on Redis"),
    Variant("cacheme 0.3.0", "cacheme030", "redis", "original cacheme 0.3.0: get_all on Redis"),
]
MICRO_VARIANTS = [
    Variant("cacheme", "ours", "local", "ours"),
    Variant("cacheme 0.3.0", "cacheme030", "local", "original cacheme 0.3.0"),
]
SCRIPTS = {
    "ours": "run_ours.py",
    "cacheme030": "run_cacheme030.py",
    "aiocache": "run_aiocache.py",
    "cashews": "run_cashews.py",
}
ENVIRONMENT_OF = {"cacheme030": "cacheme030", "aiocache": "peers", "cashews": "peers"}
LIBS = ["ours", "cacheme030", "aiocache", "cashews"]


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
    if lib == "ours":
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
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, cwd=HERE, start_new_session=True
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


def selected(variants: list[Variant], libs: list[str]) -> list[Variant]:
    return [v for v in variants if v.lib in libs]


def plan(args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for _ in range(args.rounds):
        if "micro" in args.workloads:
            runs += [Run("micro", 0, v) for v in selected(MICRO_VARIANTS, args.libs)]
        if "trace" in args.workloads:
            for workers in args.concurrency:
                runs += [Run("trace", workers, v) for v in selected(TRACE_VARIANTS, args.libs)]
        if "batch" in args.workloads:
            for workers in args.batch_concurrency:
                runs += [Run("batch", workers, v) for v in selected(BATCH_VARIANTS, args.libs)]
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


def best(runs: list[Run]) -> list[Run]:
    """Of repeated rounds, keep for each (workload, workers, variant) the fastest successful run."""
    kept: dict[tuple[str, int, str], Run] = {}
    for run in runs:
        key = (run.workload, run.workers, run.variant.label)
        old = kept.get(key)
        if old is None or (run.status == "ok" and (old.status != "ok" or faster(run, old))):
            kept[key] = run
    return list(kept.values())


def faster(a: Run, b: Run) -> bool:
    if a.workload == "micro":
        return bool(a.result["get_hit_ns"] < b.result["get_hit_ns"])
    return bool(a.result["elapsed"] < b.result["elapsed"])


def reference(runs: list[Run], run: Run) -> Run | None:
    """The cacheme 0.3.0 run to compare ``run`` with (same workload, workers and chain)."""
    label = "cacheme 0.3.0-2" if run.variant.variant in ("chain", "memoize-chain") else "cacheme 0.3.0"
    for other in runs:
        if (other.workload, other.workers, other.variant.label) == (run.workload, run.workers, label):
            return other if other.status == "ok" else None
    return None


def load_table(runs: list[Run], workload: str, workers: int) -> list[str]:
    rows = [r for r in runs if r.workload == workload and r.workers == workers]
    if not rows:
        return []
    lines = [
        "| Library | Time | vs 0.3.0 | Redis GET | MGET | SET | other | total | Loads | Unique keys "
        "| Notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in rows:
        calls = traffic(run.commands)
        get, mget, set_ = calls.pop("get", 0), calls.pop("mget", 0), calls.pop("set", 0)
        other = ", ".join(f"{name} {count}" for name, count in sorted(calls.items())) or "0"
        total = get + mget + set_ + sum(calls.values())
        if run.status != "ok":
            lines.append(
                f"| {run.variant.label} | {run.status} | | {get} | {mget} | {set_} | {other} | {total} "
                "| | | |"
            )
            continue
        result = run.result
        ref = reference(runs, run)
        ratio = (
            f"{result['elapsed'] / ref.result['elapsed']:.2f}" if ref and run.variant.lib == "ours" else ""
        )
        notes = []
        if result.get("failed"):
            notes.append(f"{result['failed']} failed ({result['first_error']})")
        if result.get("wrong"):
            notes.append(f"{result['wrong']} wrong answers")
        if result.get("storage_errors"):
            notes.append(f"{result['storage_errors']} storage errors")
        lines.append(
            f"| {run.variant.label} | {result['elapsed']:.2f} s | {ratio} | {get} | {mget} | {set_} "
            f"| {other} "
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
    ours = next(
        (r for r in runs if r.workload == "micro" and r.variant.lib == "ours" and r.status == "ok"), None
    )
    theirs = next(
        (r for r in runs if r.workload == "micro" and r.variant.lib == "cacheme030" and r.status == "ok"),
        None,
    )
    if ours is None and theirs is None:
        return []
    lines = ["| ns per operation | cacheme (ours) | cacheme 0.3.0 | ratio |", "|---|---:|---:|---:|"]
    for key, title in MICRO_ROWS:
        a = ours.result.get(key) if ours else None
        b = theirs.result.get(key) if theirs else None
        ratio = f"{a / b:.2f}" if a and b else ""
        lines.append(
            f"| {title} | {'' if a is None else f'{a:.0f}'} | {'' if b is None else f'{b:.0f}'} | {ratio} |"
        )
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


def targets(runs: list[Run], floors: dict[str, float]) -> list[str]:
    """The speed issue 6 asks for, checked on this run's figures (``floors``: the ideal times)."""
    lines: list[str] = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        mark = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        lines.append(f"| {name} | {mark} | {detail} |")

    for ours_label, theirs_label in (("cacheme", "cacheme 0.3.0"), ("cacheme-2", "cacheme 0.3.0-2")):
        ours, theirs = find(runs, "trace", 1000, ours_label), find(runs, "trace", 1000, theirs_label)
        if ours and theirs:
            a, b = ours.result["elapsed"], theirs.result["elapsed"]
            detail = f"{a:.2f} s vs {b:.2f} s ({a / b:.2f})"
            ideal = floors.get("trace 1000")
            if ideal is not None:
                detail += f"; ideal {ideal:.2f} s, ours {a / ideal:.2f}x it"
                if b / 3 < ideal:
                    detail += f"; 1/3 of 0.3.0 ({b / 3:.2f} s) is below the ideal: out of reach"
            check(f"trace 1k, {ours_label}: time <= 1/3 of 0.3.0", a <= b / 3, detail)
            ca, cb = traffic_total(ours.commands), traffic_total(theirs.commands)
            check(f"trace 1k, {ours_label}: Redis commands <= 0.3.0", ca <= cb, f"{ca} vs {cb}")
        else:
            check(f"trace 1k, {ours_label} vs 0.3.0", None, "not run")
    ours_runs = [
        r for r in runs if r.variant.lib == "ours" and r.workload in ("trace", "batch") and r.status == "ok"
    ]
    if ours_runs:
        bad = [
            f"{r.workload} {r.workers} {r.variant.label}: {r.result['loads']}/{r.result['unique']}"
            for r in ours_runs
            if r.result["loads"] != r.result["unique"]
        ]
        check("ours: loads == unique keys (every run)", not bad, "; ".join(bad) or f"{len(ours_runs)} runs")
    for workers in (1000, 10000):
        ours, theirs = find(runs, "batch", workers, "cacheme"), find(runs, "batch", workers, "cacheme 0.3.0")
        if ours and theirs:
            a, b = ours.result["elapsed"], theirs.result["elapsed"]
            detail = f"{a:.2f} s vs {b:.2f} s ({a / b:.2f})"
            ideal = floors.get(f"batch {workers}")
            if ideal is not None:
                detail += f"; ideal {ideal:.2f} s"
            check(f"batch {workers // 1000}k: time <= 1/2 of 0.3.0", a <= b / 2, detail)
            ca, cb = traffic_total(ours.commands), traffic_total(theirs.commands)
            check(f"batch {workers // 1000}k: Redis commands <= 0.3.0", ca <= cb, f"{ca} vs {cb}")
    ours, theirs = find(runs, "micro", 0, "cacheme"), find(runs, "micro", 0, "cacheme 0.3.0")
    if ours and theirs:
        for key, title in (("get_hit_ns", "local hit"), ("get_all_20_ns", "get_all of 20 local hits")):
            a, b = ours.result[key], theirs.result[key]
            check(f"micro: {title} no slower than 0.3.0", a <= b, f"{a:.0f} ns vs {b:.0f} ns ({a / b:.2f})")
    if not lines:
        return []
    return ["| Target | Result | Figures |", "|---|---|---|", *lines]


def report(runs: list[Run], info: dict[str, Any], args: argparse.Namespace) -> str:
    kept = best(runs)
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
        f"left out). Rounds: {args.rounds} (the fastest kept). Ours and the peers alternate within each "
        "concurrency.",
        "",
    ]
    floors: dict[str, float] = info.get("floors", {})
    target_lines = targets(kept, floors)
    if target_lines:
        out += ["## Targets (issue 6)", "", *target_lines, ""]
    micro = micro_table(kept)
    if micro:
        out += [
            f"## Micro (ns per operation, best of {args.micro_repeat} runs of {args.micro_number:,})",
            "",
            *micro,
            "",
        ]
    for workload, concurrency in (("trace", args.concurrency), ("batch", args.batch_concurrency)):
        for workers in concurrency:
            table = load_table(kept, workload, workers)
            if table:
                out += [f"## {workload}, {workers:,} workers", ""]
                ideal = floors.get(f"{workload} {workers}")
                if ideal is not None:
                    out += [
                        f"Ideal: {ideal:.2f} s (a cache that costs nothing but its loads, simulated by "
                        "`floor.py`).",
                        "",
                    ]
                out += [*table, ""]
    out += ["## Variants", ""]
    out += [f"- **{v.label}**: {v.description}" for v in TRACE_VARIANTS]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- main


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
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything, keep the fastest")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run before it is 'timeout'")
    parser.add_argument("--micro-number", type=int, default=None, help="micro: operations per timed run")
    parser.add_argument("--micro-repeat", type=int, default=None, help="micro: timed runs, best kept")
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
    args.output.write_text(text)
    print()
    print(text)
    print(f"written to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
