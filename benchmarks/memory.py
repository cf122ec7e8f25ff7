"""Memory per local entry: what a key held in ``local://tlfu`` or ``local://lru`` costs (keys, values aside).

    python benchmarks/memory.py                      # 3 rounds, prints the report
    python benchmarks/memory.py --write              # and writes its section of benchmarks/RESULTS.md
    python benchmarks/memory.py --baseline HEAD      # also the local storages of another commit, side by side
    python benchmarks/memory.py --entries 200000 --rounds 1 --no-churn --no-reads   # a quick look

Each case runs in a fresh process of its own (``python benchmarks/memory.py --child SPEC``), so that
no allocation of one case lands in another's figure. A child builds ``--entries`` (1,000,000) distinct
str keys and one value object shared by every key (the keys and the value are not counted), measures
its resident memory (``/proc/self/statm``, after ``gc.collect()`` and glibc's ``malloc_trim(0)``, so
that freed memory is not counted; theine_core's Rust allocations are invisible to tracemalloc, RSS
sees them), then creates the storage and writes every key (``set_sync(key, value, ttl)``, ttl ``None``
or 1 hour; size = the number of keys, so nothing is evicted; ``len`` is checked), measures again, and
reports (after - before) / entries: the **fill** figure, the one users size a tier by. Then, unless
``--no-churn``, it writes as many new keys again: every write now evicts one (a full cache at work:
its dicts resize with deleted slots in them, and settle larger than when filled once), and measures
the **churn** figure. Cases: a plain ``dict`` (the floor: one slot per key), theine's own
``theine.Cache`` (same policy, ``theine_core.TlfuCore``), ``local://tlfu`` and ``local://lru``, each
without and with a ttl.

Besides the figure with one shared value, each case runs once more with a distinct
``cacheme.entry.Entry`` per key, as the engine stores them (a value's age: loaded_at and load_time
floats of its own, and expires_at when the tier has a ttl): the **with Entry** figure, for
information (the value itself still shared). And one child per case runs under tracemalloc (fill
only, shared value): the **Python side** (what CPython allocated; the rest of RSS is theine_core's
Rust memory and the allocator's overhead).

Rounds alternate the cases; the report gives the median over the rounds (and the range). With
``--baseline COMMIT`` the local storages of cacheme-local at that commit (its ``src`` taken with
``git show`` into a temporary directory put first on the children's ``PYTHONPATH``) run too, as
extra rows, alternating with ours. Unless ``--no-reads``, the report also times the read path,
``get_sync`` (a hit on a key without a ttl, one on a key with a ttl, a miss; ns per call, best of
7 runs), of each local storage, ours and the baseline's, alternating in one child process per
``--read-rounds`` (the baseline's module loaded from its file there).

Targets (the "memory per local entry" issue), fill, shared value: tlfu <= 250 bytes per entry,
lru <= 120, a ttl adding <= 40 bytes (each policy). The report is written between markers into
benchmarks/RESULTS.md with ``--write``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- memory:begin -->", "<!-- memory:end -->"
TTL = timedelta(hours=1)
LOCAL_SOURCE = "cacheme-local/src/cacheme_local"
TARGETS = {"tlfu": 250.0, "lru": 120.0}
TTL_TARGET = 40.0


@dataclass(frozen=True)
class Case:
    name: str  # what the child builds: dict, theine, tlfu, lru
    ttl: bool = False
    source: str = "ours"  # "ours", or "baseline" (the --baseline commit's cacheme-local)

    @property
    def label(self) -> str:
        text = {
            "dict": "plain `dict`",
            "theine": "theine's `Cache` (tlfu)",
            "tlfu": "`local://tlfu`",
            "lru": "`local://lru`",
        }[self.name]
        if self.ttl:
            text += ", ttl 1 h"
        return text

    @property
    def local(self) -> bool:
        return self.name in ("tlfu", "lru")


# ---------------------------------------------------------------- the child


def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``: give the free memory of the heap back, so that RSS counts live memory."""
    try:
        trim: Callable[[int], object] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc: freed memory may stay counted
        return lambda: None
    return lambda: trim(0)


_trim = _malloc_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident() -> int:
    """This process's resident memory in bytes, after a full collection and a trim of malloc's free memory."""
    gc.collect()
    _trim()
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:  # no /proc: the peak, a poorer figure
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one case, measure it, return its figures (bytes per entry)."""
    import tracemalloc

    import cacheme
    import cacheme_local.storage
    from cacheme.entry import Entry

    name: str = spec["case"]
    count: int = spec["entries"]
    ttl = TTL if spec["ttl"] else None
    ttl_seconds = TTL.total_seconds() if spec["ttl"] else None
    with_entry: bool = spec["entry"]
    traced: bool = spec["traced"]
    cache: Any
    if name == "theine":
        import theine

    keys = [f"cacheme:memory:{i}" for i in range(count)]
    more = [f"cacheme:memory:more:{i}" for i in range(count)] if spec["churn"] else []
    for some in (keys, more):
        for key in some:
            hash(key)  # a str keeps its hash: computed now, nothing is allocated later for it
    value = object()

    def item(index: int) -> Any:
        """What is stored for the index-th key: the shared value, or an Entry of its own."""
        if not with_entry:
            return value
        loaded_at = time.time()
        load_time = index / 1e9 + 0.001  # a float of its own, as a measured load time is
        return Entry(value, loaded_at, load_time, None if ttl_seconds is None else loaded_at + ttl_seconds)

    if traced:
        tracemalloc.start()
        traced_before = tracemalloc.get_traced_memory()[0]
    before = resident()
    if name == "dict":
        plain: dict[str, Any] = {}
        for index, key in enumerate(keys):
            plain[key] = item(index)
        cache = plain
    elif name == "theine":
        cache = theine.Cache(count)
        for index, key in enumerate(keys):
            cache.set(key, item(index), ttl)
        cache._force_drain_write()  # the last writes buffered: the policy holds every key
    else:
        cache = cacheme.Storage(f"local://{name}", size=count)
        for index, key in enumerate(keys):
            cache.set_sync(key, item(index), ttl)
    filled = resident()
    result: dict[str, Any] = {
        "fill": (filled - before) / count,
        "module": cacheme_local.storage.__file__,
        "length": len(cache),
    }
    if traced:
        result["python"] = (tracemalloc.get_traced_memory()[0] - traced_before) / count
        tracemalloc.stop()
    if len(cache) != count:
        raise SystemExit(f"{name}: {len(cache):,} entries held after writing {count:,} keys")
    if more:
        if name == "dict":
            for index, key in enumerate(more):
                del cache[keys[index]]  # first in, first out: the dict's own order
                cache[key] = item(index)
        elif name == "theine":
            for index, key in enumerate(more):
                cache.set(key, item(index), ttl)
            cache._force_drain_write()
        else:
            for index, key in enumerate(more):
                cache.set_sync(key, item(index), ttl)
        result["churn"] = (resident() - before) / count
        result["churn_length"] = len(cache)
    return result


READS = (("plain", "plain:500"), ("timed", "timed:500"), ("miss", "absent"))


def reads_child(spec: dict[str, Any]) -> dict[str, Any]:
    """ns per ``get_sync`` of each local storage, ours and (``spec["baseline"]``) the baseline's,
    in this one process: a hit on a key without a ttl, one on a key with a ttl, a miss. The
    storages' timings alternate, each the best of 7."""
    import importlib.util

    import cacheme_local.storage

    modules: dict[str, Any] = {"ours": cacheme_local.storage}
    if spec["baseline"]:
        loaded = importlib.util.spec_from_file_location(
            "baseline_storage", Path(spec["baseline"]) / "cacheme_local" / "storage.py"
        )
        assert loaded is not None and loaded.loader is not None
        modules["baseline"] = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(modules["baseline"])
    storages: dict[tuple[str, str], Any] = {}
    for source, module in modules.items():
        for name, storage_class in (("tlfu", module.TLFUStorage), ("lru", module.LRUStorage)):
            storage = storage_class(f"local://{name}", size=10_000)
            for i in range(1000):
                storage.set_sync(f"plain:{i}", i, None)
                storage.set_sync(f"timed:{i}", i, TTL)
            storages[(source, name)] = storage
    number = spec["number"]
    best: dict[str, float] = {}
    for _ in range(7):
        for (source, name), storage in storages.items():
            for kind, key in READS:
                timer = timeit.Timer("get(key)", globals={"get": storage.get_sync, "key": key})
                figure = timer.timeit(number) / number * 1e9
                slot = f"{source} {name} {kind}"
                best[slot] = min(best.get(slot, figure), figure)
    return {"module": cacheme_local.storage.__file__, "best": best}


# ---------------------------------------------------------------- the driver


def baseline_source(commit: str, into: Path) -> Path:
    """cacheme-local's package at ``commit``, written under ``into`` (a PYTHONPATH entry)."""
    package = into / "cacheme_local"
    package.mkdir(parents=True)
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{commit}:{LOCAL_SOURCE}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in names:
        if name.endswith(".py") or name == "py.typed":
            text = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{commit}:{LOCAL_SOURCE}/{name}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (package / name).write_text(text)
    return into


def run_child(spec: dict[str, Any], baseline: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    if spec.get("source") == "baseline":
        assert baseline is not None
        env["PYTHONPATH"] = os.pathsep.join([str(baseline)] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {spec} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    expected = str(baseline) if spec.get("source") == "baseline" else str(ROOT / LOCAL_SOURCE)
    if not result["module"].startswith(expected):
        raise SystemExit(f"child {spec} ran {result['module']}, not the storage under {expected}")
    return result


def cases(args: argparse.Namespace) -> list[Case]:
    ours = [
        Case("dict"),
        Case("theine"),
        Case("tlfu"),
        Case("tlfu", ttl=True),
        Case("lru"),
        Case("lru", ttl=True),
    ]
    if args.baseline:
        ours += [Case(c.name, c.ttl, "baseline") for c in ours if c.local]
    return ours


def measure(args: argparse.Namespace, baseline: Path | None) -> dict[Case, dict[str, list[float]]]:
    figures: dict[Case, dict[str, list[float]]] = {c: {} for c in cases(args)}
    plan: list[tuple[Case, bool, bool]] = []  # case, with Entry, under tracemalloc
    for round_number in range(args.rounds):
        order = cases(args)
        shift = round_number % len(order)
        order = order[shift:] + order[:shift]  # alternate: no case is always first or last
        plan += [(case, False, False) for case in order]
        if round_number == 0:
            plan += [(case, True, False) for case in order]
            if not args.no_traced:
                plan += [(case, False, True) for case in order]
    for step, (case, with_entry, traced) in enumerate(plan, 1):
        spec = {
            "case": case.name,
            "ttl": case.ttl,
            "source": case.source,
            "entries": args.entries,
            "entry": with_entry,
            "traced": traced,
            "churn": not args.no_churn and not with_entry and not traced,
        }
        what = " with Entry" if with_entry else " under tracemalloc" if traced else ""
        print(f"[{step}/{len(plan)}] {case.source}: {case.label}{what} ...", end=" ", flush=True)
        result = run_child(spec, baseline)
        if with_entry:
            figures[case].setdefault("entry", []).append(result["fill"])
        elif traced:
            figures[case].setdefault("python", []).append(result["python"])
        else:
            figures[case].setdefault("fill", []).append(result["fill"])
            if "churn" in result:
                figures[case].setdefault("churn", []).append(result["churn"])
        print(
            f"{result['fill']:.1f} B/entry" + (f", churn {result['churn']:.1f}" if "churn" in result else "")
        )
    return figures


def time_reads(args: argparse.Namespace, baseline: Path | None) -> dict[str, list[float]]:
    """``{"ours tlfu plain": [ns, one per round], ...}``: a child process per round, the storages
    timed alternately in it."""
    timings: dict[str, list[float]] = {}
    for round_number in range(args.read_rounds):
        spec = {"reads": True, "number": args.read_number, "baseline": str(baseline) if baseline else ""}
        result = run_child(spec, baseline)
        for slot, figure in result["best"].items():
            timings.setdefault(slot, []).append(figure)
        print(
            f"reads {round_number + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in result["best"].items()),
            flush=True,
        )
    return timings


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def shown(values: Sequence[float] | None, digits: int = 1) -> str:
    """``median (min-max)``, to ``digits`` decimals; ``-`` when not measured."""
    if not values:
        return "-"
    low, middle, high = min(values), statistics.median(values), max(values)
    if round(high - low, digits) == 0:
        return f"{middle:,.{digits}f}"
    return f"{middle:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(
        f"{name} {version(name)}" for name in ("cacheme-core", "cacheme-local", "theine", "theine-core")
    )


def commit_of(revision: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision], capture_output=True, text=True
    )
    return done.stdout.strip() or revision


def report(
    figures: dict[Case, dict[str, list[float]]],
    timings: dict[tuple[str, str], dict[str, list[float]]],
    args: argparse.Namespace,
) -> str:
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", LOCAL_SOURCE], capture_output=True, text=True
    ).stdout.strip()
    ours = f"commit {commit_of('HEAD')}" + (" with uncommitted changes to cacheme-local" if dirty else "")
    baseline = f"commit {commit_of(args.baseline)}" if args.baseline else ""
    churn = (
        ""
        if args.no_churn
        else (
            f" **churn**: after {args.entries:,} more keys written, each evicting one (the storage full, "
            "its dicts resized with deleted slots);"
        )
    )
    setup = (
        f"{args.entries:,} distinct str keys, one value object shared by every key (keys and values not "
        f"counted); each case in a fresh process; resident memory (`/proc/self/statm`, after "
        f"`gc.collect()` and `malloc_trim(0)`) before the storage is created and after every key is "
        f"written with `set_sync` (size = {args.entries:,}: nothing evicted, `len` checked), divided by "
        f"the number of keys. **fill**: that figure;{churn} **with Entry**: fill with a distinct "
        f"`cacheme.entry.Entry` per key as the engine stores (its own loaded_at and load_time floats, "
        f"expires_at with a ttl; for information); **Python side**: what tracemalloc saw of fill (the "
        f"rest is theine_core's Rust memory and malloc's overhead). {args.rounds} round(s), the cases "
        f"alternating: median (range). Ours: {ours}"
        + (f"; baseline: {baseline}" if baseline else "")
        + f". {versions()}. Machine: {machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. `{' '.join(['python', 'benchmarks/memory.py', *args.argv])}`."
    )
    lines = [BEGIN, "## Memory per local entry (`benchmarks/memory.py`)", "", setup, ""]
    lines += [
        "| bytes per entry | fill | churn | with Entry | Python side |",
        "|---|---:|---:|---:|---:|",
    ]
    for case, found in figures.items():
        label = case.label + (f" ({baseline})" if case.source == "baseline" else "")
        lines.append(
            f"| {label} | {shown(found.get('fill'))} | {shown(found.get('churn'))} | "
            f"{shown(found.get('entry'))} | {shown(found.get('python'))} |"
        )
    lines += [
        "",
        "Targets (the issue), fill, shared value:",
        "",
        "| Target | Result | Figures |",
        "|---|---|---|",
    ]
    for source, suffix in (("ours", ""), ("baseline", f" ({baseline})")):
        if source == "baseline" and not args.baseline:
            continue
        for name, target in TARGETS.items():
            plain = median(figures[Case(name, False, source)].get("fill", []))
            timed = median(figures[Case(name, True, source)].get("fill", []))
            lines.append(
                f"| `local://{name}`{suffix} <= {target:g} bytes per entry | "
                f"{'met' if plain <= target else 'NOT met'} | {plain:,.1f} |"
            )
            lines.append(
                f"| `local://{name}`{suffix}: a ttl adds <= {TTL_TARGET:g} bytes | "
                f"{'met' if timed - plain <= TTL_TARGET else 'NOT met'} | "
                f"{timed - plain:+,.1f} ({timed:,.1f} - {plain:,.1f}) |"
            )
    if timings:
        lines += [
            "",
            f"Read path: ns per `get_sync` (timeit of {args.read_number:,} calls, best of 7; each storage "
            f"holds 1,000 keys without a ttl and 1,000 with one, size 10,000; the storages timed "
            f"alternately in one process), median over {args.read_rounds} process(es) (range):",
            "",
        ]
        header = "| `get_sync` | ours |" + (f" {baseline} | ours / {baseline} |" if args.baseline else "")
        lines += [header, "|---|---:|" + ("---:|---:|" if args.baseline else "")]
        for name in ("tlfu", "lru"):
            for kind, text in (("plain", "a hit, no ttl"), ("timed", "a hit, ttl 1 h"), ("miss", "a miss")):
                mine = timings[f"ours {name} {kind}"]
                row = f"| `local://{name}`, {text} | {shown(mine, 0)} |"
                if args.baseline:
                    theirs = timings[f"baseline {name} {kind}"]
                    row += f" {shown(theirs, 0)} | {median(mine) / median(theirs):.2f} |"
                lines.append(row)
    lines.append(END)
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="also measure cacheme-local at this commit")
    parser.add_argument(
        "--no-churn", action="store_true", help="fill only: no second pass of evicting writes"
    )
    parser.add_argument("--no-traced", action="store_true", help="no tracemalloc children")
    parser.add_argument("--no-reads", action="store_true", help="no read-path timing")
    parser.add_argument("--read-rounds", type=int, default=3)
    parser.add_argument("--read-number", type=int, default=200_000)
    parser.add_argument("--write", action="store_true", help="write the report into benchmarks/RESULTS.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.child is not None:
        spec = json.loads(args.child)
        print(json.dumps(reads_child(spec) if spec.get("reads") else child(spec)), flush=True)
        return
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as workdir:
        baseline = baseline_source(args.baseline, Path(workdir) / "baseline") if args.baseline else None
        figures = measure(args, baseline)
        timings = {} if args.no_reads else time_reads(args, baseline)
    text = report(figures, timings, args)
    print(f"\n{text}\n\n({time.monotonic() - started:.0f} s)")
    if args.write:
        sys.path.insert(0, str(ROOT))
        from benchmarks.outage import write_report

        write_report(text, BEGIN, END)


if __name__ == "__main__":
    main(sys.argv[1:])
