"""The fetch tasks: what runs, in tasks of its own, when requests miss the leading local tiers.

A loop turn's misses of one node class are fetched by one task
(``_fetch_group``): one batch read per remote tier (``cacheme.reading``),
then a task per key still missing that loads it from its source and writes
it into the local tiers (``_load_and_write``; a chain of local tiers only
starts that task at once). A key loaded, and those loaded within 2 ms after
it, are written into the remote tiers together, by the first of those tasks
(``cacheme.writeback``). ``get_all``'s misses are fetched by one task
(``fetch_many``) that reads, loads and writes in batches. Each task ends by
finishing its flights (singleflight): its waiters get the value or the error.
A background reload (refresh_after, early_refresh) is a fetch task too
(``renew``), and a failed load may answer with an expired entry
(stale_if_error). Under ``Meta.lease`` the keys still missing are leased
first (``cacheme.lease``): a key another process holds is waited for by a
task of its own (``_wait_for_lease``). Calling the source itself is
``cacheme.source``'s job.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import threading
import time
import typing
from collections.abc import Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from cacheme import singleflight
from cacheme.chain import ERROR_LOG_INTERVAL, write_local, write_remotes
from cacheme.entry import Entry
from cacheme.lease import Taken, Ticket
from cacheme.node import Node
from cacheme.reading import Backfill, first_epoch, found_by_lease, read_remote_tiers, write_backfills
from cacheme.refresh import Verdict, judge, stale_usable
from cacheme.source import Loader, call_source, load_failed, load_many, load_one, loaded, values_in_order
from cacheme.writeback import end_leases, give_back_cancelled, write_back

if TYPE_CHECKING:
    from cacheme.config import NodeConfig

__all__ = ["answers", "fetch_many", "renew", "want"]

logger = logging.getLogger("cacheme")

# The keys being refreshed or invalidated (the same dict as singleflight.changing, never rebound).
# A flight made for one of them is made stale: it may read the value being replaced.
_changing = singleflight.changing


def _admitted(config: NodeConfig, key: str) -> bool:
    """The doorkeeper's verdict on caching a freshly loaded key."""
    doorkeeper = config.doorkeeper
    if doorkeeper is None or doorkeeper.contains(key):
        return True
    doorkeeper.put(key)
    return False


# ---------------------------------------------------------------- refresh-ahead and stale-if-error


def answers(config: NodeConfig, key: str, node: Node, load: Loader | None, entry: Entry) -> bool:
    """Whether ``entry``, found for ``key`` in a tier, answers a request under the node's policy.

    An entry due for renewal answers, and its background reload starts; an
    expired one (kept for stale_if_error) does not.
    """
    assert config.policy is not None
    verdict = judge(config.policy, entry, time.time(), random.random)
    if verdict is Verdict.FRESH:
        return True
    if verdict is Verdict.RENEW:
        renew(singleflight.table(), config, key, node, load, entry)
        return True
    return False


def renew(
    table: singleflight.FlightTable,
    config: NodeConfig,
    key: str,
    node: Node,
    load: Loader | None,
    entry: Entry,
) -> None:
    """Reload ``key`` in the background and rewrite every tier, unless the key is being fetched
    here or reloaded in another event loop of the process (one reload per key per process).

    The reload is a flight of the key: requests that miss meanwhile wait for
    it. Its failure is logged and counted, never raised; ``entry`` answers
    whoever waits on it then.
    """
    if key in table.flights:
        return
    flight = singleflight.Flight(None, node, load)
    with _renewing_lock:
        if key in _renewing:
            return
        _renewing[key] = flight
    flight.renewal = True
    flight.fallback = entry
    if _changing and key in _changing:
        flight.stale = True
    table.flights[key] = flight
    config.metrics._refreshes += 1
    flight.task = table.spawn(_load_and_write(table, config, key, flight))
    # However the task ends (cancelled before it ran, at a loop's shutdown, too).
    flight.task.add_done_callback(functools.partial(_renewal_ended, key, flight))


def _renewal_ended(key: str, flight: singleflight.Flight, task: object = None) -> None:
    """The reload of ``key`` by ``flight`` is over: another may start. As a task's done callback
    (``task`` given), only if that task still works for the flight (not handed a write group)."""
    if task is not None and flight.task is not task:
        return
    with _renewing_lock:
        if _renewing.get(key) is flight:
            del _renewing[key]


def _answer_stale(config: NodeConfig, flight: singleflight.Flight) -> bool:
    """Answer a flight whose load failed with its fallback entry, if it may (stale_if_error)."""
    entry = flight.fallback
    if entry is None or flight.done:
        return False
    policy = config.policy
    if not stale_usable(entry, time.time(), None if policy is None else policy.stale_if_error):
        return False
    flight.resolve(entry.value, True)
    config.metrics._stale += 1
    return True


# The keys being reloaded in the background, in any event loop of the process, and by which flight.
_renewing: dict[str, singleflight.Flight] = {}
_renewing_lock = threading.Lock()

_renewal_logged: dict[str, float] = {}


def _renewal_failed(config: NodeConfig, key: str, error: BaseException) -> None:
    """Count and log (at most once per ERROR_LOG_INTERVAL per node class) a failed background reload."""
    config.metrics._refresh_failures += 1
    name = config.node_class.__qualname__
    now = time.monotonic()
    if now - _renewal_logged.get(name, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
        _renewal_logged[name] = now
        logger.warning(
            "cacheme: the background reload of %s %r failed: %r (the cached entry stays; repeats "
            "within %.0fs are counted, not logged)",
            name,
            key,
            error,
            ERROR_LOG_INTERVAL,
        )


# ---------------------------------------------------------------- fetching (in tasks of their own)


def want(
    table: singleflight.FlightTable, config: NodeConfig, key: str, node: Node, load: Loader | None
) -> singleflight.Flight:
    """Enter a flight for ``key``; the keys wanted in one loop turn are fetched by one task."""
    flight = singleflight.Flight(None, node, load)
    if _changing and key in _changing:
        flight.stale = True
    table.flights[key] = flight
    if not config.reads_before_load:  # nothing to read first: the key's load starts at once
        flight.task = table.spawn(_load_and_write(table, config, key, flight))
        return flight
    pending = table.groups.get(config)
    if pending is None:
        group: dict[str, singleflight.Flight] = {}
        pending = table.groups[config] = (group, table.spawn(_fetch_group(table, config, group)))
    group, flight.task = pending
    group[key] = flight
    return flight


async def _fetch_group(
    table: singleflight.FlightTable, config: NodeConfig, group: dict[str, singleflight.Flight]
) -> None:
    """Read the keys of one loop turn from the remote tiers together; load each key still missing.

    The task is created at the turn's first miss and first runs in the next
    turn, when every miss of this one has joined ``group``.
    """
    del table.groups[config]
    handed_over: set[str] = set()
    error: BaseException | None = None
    due: list[tuple[str, Entry]] = []
    try:
        reading = await read_remote_tiers(config, group)
        due = reading.due
        missing = reading.missing
        if config.lease is not None and missing:
            missing, held = await _take_leases(table, config, group, missing, reading.backfills)
            handed_over.update(held)
        for key in missing:
            flight = group[key]
            flight.task = table.spawn(_load_and_write(table, config, key, flight))
            handed_over.add(key)
        await write_backfills(config, reading.backfills)
    except BaseException as caught:  # delivered to every waiter by finish()
        error = caught
        if not isinstance(caught, Exception):
            raise
    finally:
        table.finish(((k, f) for k, f in group.items() if k not in handed_over), error)
    for key, entry in due:
        flight = group[key]
        renew(table, config, key, flight.node, flight.load, entry)


async def _load_and_write(
    table: singleflight.FlightTable, config: NodeConfig, key: str, flight: singleflight.Flight
) -> None:
    """Load one key from its source, answer its waiters, write it into every tier.

    A failed load answers the waiters with the flight's fallback entry when
    it may (stale_if_error), else with the error. A background reload's
    failure is logged and counted. A lease the flight holds ends with the
    fenced write and its notice, or is given back when nothing is written.
    """
    # The flight does not keep the node through the write-back (see fetch_many).
    node, load = flight.node, flight.load
    flight.node = flight.load = None
    error: BaseException | None = None
    handed = False  # whether the flight went to another task's write-back (which finishes it)
    marks = None if flight.lease is None else {key: flight.lease}
    try:
        # load_one's work, inline: one coroutine less for each key being loaded.
        started = time.perf_counter_ns()
        try:
            value = await call_source(config, node, load)
        except Exception as caught:
            load_failed(config, started)
            if flight.renewal:
                _renewal_failed(config, key, caught)
            if (flight.renewal and flight.waiters is None) or not _answer_stale(config, flight):
                error = caught  # no one waits on a failed background reload: it ends here
            if marks is not None:
                await end_leases(config, marks, ())
            return
        entry = loaded(config, started, value)
        del node, load, value
        written = not flight.stale and (flight.renewal or _admitted(config, key))
        if written:
            write_local(config, config.tiers, {key: entry}, flight.epoch)
        flight.resolve(entry.value, False)
        if written and config.remote:
            handed = await write_back(table, config, key, flight, entry)
            if handed and flight.renewal and flight.task is not None:  # ends with the task it went to
                flight.task.add_done_callback(functools.partial(_renewal_ended, key, flight))
            return
        if marks is not None:
            await end_leases(config, marks, ())
    except BaseException as caught:
        error = caught
        if marks is not None and isinstance(caught, asyncio.CancelledError):
            await give_back_cancelled(config, marks)
        if not isinstance(caught, Exception):
            raise
    finally:
        if not handed:
            table.finish(((key, flight),), error)
            if flight.renewal:
                _renewal_ended(key, flight)


async def _wait_for_lease(
    table: singleflight.FlightTable, config: NodeConfig, key: str, flight: singleflight.Flight, ticket: Ticket
) -> None:
    """Wait while another process holds the lease of ``key``: then answer with the value it wrote,
    or load the key here (the lease granted to this process, or the lease tier failed)."""
    assert config.lease is not None
    error: BaseException | None = None
    load = False
    try:
        taken = await config.lease.turn(config, ticket)
        backfills: list[Backfill] = []
        load = bool(_apply(config, {key: flight}, taken, backfills))
        await write_backfills(config, backfills)
    except BaseException as caught:
        error = caught
        if not isinstance(caught, Exception):
            raise
    finally:
        if error is not None or not load:
            table.finish(((key, flight),), error)
    if load and error is None:
        await _load_and_write(table, config, key, flight)


async def _take_leases(
    table: singleflight.FlightTable,
    config: NodeConfig,
    flights: Mapping[str, singleflight.Flight],
    keys: list[str],
    backfills: list[Backfill],
) -> tuple[list[str], list[str]]:
    """Ask the lease tier for the leases of ``keys``, which no tier has: answer the flights of the
    keys written meanwhile; give each granted flight its lease; hand each key another process
    holds to a task of its own that waits for it (its flight's ``source`` must be set).

    Returns the keys to load now (granted, or no lease to be had: fail-open)
    and the keys handed over.
    """
    assert config.lease is not None
    taken = await config.lease.take(config, keys)
    load = _apply(config, flights, taken, backfills)
    for key, ticket in taken.held.items():
        flight = flights[key]
        flight.task = table.spawn(_wait_for_lease(table, config, key, flight, ticket))
    return load, list(taken.held)


def _apply(
    config: NodeConfig, flights: Mapping[str, singleflight.Flight], taken: Taken, backfills: list[Backfill]
) -> list[str]:
    """Answer the flights of the keys the lease tier had; give the flights to load their marks.
    Returns the keys to load here (granted, leaseless, or whose bytes did not decode)."""
    load = found_by_lease(config, flights, taken.found, backfills)
    for key, mark in itertools.chain(taken.granted.items(), taken.unleased.items()):
        # A key loaded without a lease keeps the mark asked for: it may stand in the tier all
        # the same, and then it must be replaced (fenced write) or released, and its waiters told.
        flights[key].lease = mark
        load.append(key)
    return load


async def fetch_many(
    table: singleflight.FlightTable,
    config: NodeConfig,
    wanted: dict[str, Node],
    flights: dict[str, singleflight.Flight],
) -> None:
    """get_all's fetch of the keys of ``flights``: one batch read per tier, then the source for the
    rest, batch writes. ``wanted`` holds the node of each of those keys (and maybe of others).

    A node class with a ``load_all`` of its own loads the rest with one call,
    whose outcome is every key's. Otherwise each node is loaded by itself,
    concurrently, and each key gets its own outcome: one key's failure fails
    only that key's waiters. A key whose load fails is answered with its
    fallback entry when it may (stale_if_error).
    """
    error: BaseException | None = None
    due: list[tuple[str, Node, Entry]] = []
    handed_over: list[str] = []  # keys another process holds: each waited for by a task of its own
    loaded: dict[str, Entry] = {}
    try:
        reading = await read_remote_tiers(config, flights)
        missing = reading.missing
        if config.lease is not None and missing:
            alone = _load_all_of_one if config.own_load_all else None
            for key in missing:  # what a key another process holds is loaded with, if taken over
                flights[key].node, flights[key].load = wanted[key], alone
            missing, handed_over = await _take_leases(table, config, flights, missing, reading.backfills)
        nodes = in_order(wanted, missing)
        due = _due_nodes(reading.due, wanted)
        # Under load thousands of fetches wait for their write-back: holding the
        # caller's nodes until then only feeds the garbage collector.
        del wanted
        if missing:
            if config.own_load_all:
                await _load_batch(config, missing, nodes, flights, loaded)
            else:
                await _load_each(config, missing, nodes, flights, loaded)
        del nodes
        await write_backfills(config, reading.backfills)
        if config.lease is None:
            await write_remotes(config, config.tiers, loaded)
        else:
            sent = await write_remotes(config, config.tiers, loaded, marks=_marks_of(flights, loaded))
            marks = _marks_of(flights, missing)
            if marks:
                await end_leases(config, marks, sent)
    except BaseException as caught:
        error = caught
        if config.lease is not None and isinstance(caught, asyncio.CancelledError):
            marks = _marks_of(flights, [key for key in flights if key not in handed_over])
            if marks:
                await give_back_cancelled(config, marks)
        if not isinstance(caught, Exception):
            raise
    finally:
        if handed_over:
            table.finish(((k, f) for k, f in flights.items() if k not in handed_over), error)
        else:
            table.finish(flights.items(), error)
    for key, node, entry in due:
        renew(table, config, key, node, None, entry)


async def _load_all_of_one(node: Node) -> Any:
    """A get_all's key whose lease this process took over later: loaded with its class's own
    ``load_all``, as the rest of the batch was."""
    node_class = type(node)
    return values_in_order(node_class, [node], await node_class.load_all([node]))[0]


def _marks_of(flights: Mapping[str, singleflight.Flight], keys: Iterable[str]) -> dict[str, bytes] | None:
    """The leases the flights of ``keys`` hold, by key (None when they hold none)."""
    marks = {key: mark for key in keys if (mark := flights[key].lease) is not None}
    return marks or None


def _due_nodes(due: list[tuple[str, Entry]], wanted: Mapping[str, Node]) -> list[tuple[str, Node, Entry]]:
    return [(key, wanted[key], entry) for key, entry in due]


async def _load_batch(
    config: NodeConfig,
    missing: list[str],
    nodes: list[Node],
    flights: Mapping[str, singleflight.Flight],
    loaded: dict[str, Entry],
) -> None:
    """Load ``nodes`` with the class's ``load_all``; resolve their flights and write the local tiers.

    What the remote tiers are to get goes into ``loaded``. A failed
    ``load_all`` fails every flight with its exception (each answered with
    its fallback instead when it may).
    """
    try:
        entries = await load_many(config, nodes)
    except Exception as caught:
        for key in missing:
            flight = flights[key]
            if not _answer_stale(config, flight):
                flight.fail(caught)
        return
    for key, entry in zip(missing, entries, strict=True):
        if not flights[key].stale and _admitted(config, key):
            loaded[key] = entry
    write_local(config, config.tiers, loaded, first_epoch(flights, loaded))
    for key, entry in zip(missing, entries, strict=True):
        flights[key].resolve(entry.value, False)


async def _load_each(
    config: NodeConfig,
    missing: list[str],
    nodes: list[Node],
    flights: Mapping[str, singleflight.Flight],
    loaded: dict[str, Entry],
) -> None:
    """Load each of ``nodes`` by itself, concurrently, each counted on its own; then answer each
    flight with its own outcome and write the local tiers.

    What the remote tiers are to get goes into ``loaded``. A load's exception
    fails its own flight only (answered with its fallback instead when it may).
    """
    if len(nodes) == 1:
        outcomes = [await _try_load(config, nodes[0])]
    else:
        outcomes = await asyncio.gather(*_try_loads(config, nodes))
    for key, (entry, _) in zip(missing, outcomes, strict=True):
        if entry is not None and not flights[key].stale and _admitted(config, key):
            loaded[key] = entry
    write_local(config, config.tiers, loaded, first_epoch(flights, loaded))
    for key, (entry, error) in zip(missing, outcomes, strict=True):
        flight = flights[key]
        if entry is not None:
            flight.resolve(entry.value, False)
        elif not _answer_stale(config, flight):
            flight.fail(typing.cast(Exception, error))


async def _try_load(config: NodeConfig, node: Node) -> tuple[Entry | None, Exception | None]:
    """``(entry, None)`` from the node's source, or ``(None, its exception)``."""
    try:
        return await load_one(config, node, None), None
    except Exception as error:
        return None, error


def _try_loads(
    config: NodeConfig, nodes: list[Node]
) -> list[Coroutine[Any, Any, tuple[Entry | None, Exception | None]]]:
    return [_try_load(config, node) for node in nodes]


# Comprehensions in helpers of their own: inside a coroutine, each variable a
# comprehension reads becomes a cell object kept for the whole call.


def in_order(values: Mapping[str, Any], keys: list[str]) -> list[Any]:
    return [values[key] for key in keys]
