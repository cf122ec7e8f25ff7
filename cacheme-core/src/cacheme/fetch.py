"""The fetch tasks: what runs, in tasks of its own, when requests miss the leading local tiers.

A loop turn's misses of one node class are fetched by one task
(``_fetch_group``): one batch read per remote tier, then a task per key still
missing that loads it from its source and writes it back
(``_load_and_write``). ``get_all``'s misses are fetched by one task
(``fetch_many``) that reads, loads and writes in batches. Each task ends by
finishing its flights (singleflight): its waiters get the value or the error.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import typing
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cacheme import singleflight
from cacheme.chain import decode_found, read_remote, storage_failed, write_local, write_remotes
from cacheme.node import Node
from cacheme.storage import LocalStorage

if TYPE_CHECKING:
    from cacheme.engine import NodeConfig

__all__ = ["Loader", "fetch_many", "load_one", "want"]

# A source used instead of ``node.load()``: called with the node (``get(node, load_fn)``, Memoize).
Loader = Callable[[Any], Awaitable[Any]]

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


# ---------------------------------------------------------------- loading


async def load_one(config: NodeConfig, node: Node, load: Loader | None) -> Any:
    metrics = config.metrics
    started = time.perf_counter_ns()
    try:
        value = await (node.load() if load is None else load(node))
    except BaseException:
        metrics._load_failures += 1
        metrics._load_time_ns += time.perf_counter_ns() - started
        raise
    metrics._load_successes += 1
    metrics._load_time_ns += time.perf_counter_ns() - started
    return value


def values_in_order(node_class: type[Node], nodes: Sequence[Node], returned: object) -> list[Any]:
    """The values ``load_all`` returned for ``nodes``, in the order of ``nodes``.

    ``load_all`` may return one of three forms; anything else is an error,
    never a wrong value:

    - the values, in the order of ``nodes`` (one per node);
    - ``(node, value)`` pairs in any order (cacheme 0.3.0's form): every node
      asked for must have one; pairs for other nodes are ignored;
    - a mapping from node to value, with the same rule.
    """
    name = f"{node_class.__qualname__}.load_all"
    if isinstance(returned, Mapping):
        return _values_by_key(name, nodes, ((node, value) for node, value in returned.items()))
    if not isinstance(returned, Sequence) or isinstance(returned, (str, bytes, bytearray)):
        raise TypeError(
            f"{name} must return a list of values in the nodes' order, a list of (node, value) pairs "
            f"or a dict from node to value; it returned a {type(returned).__name__}"
        )
    pairs = sum(1 for item in returned if _is_pair(item))
    if pairs and pairs == len(returned):
        return _values_by_key(name, nodes, returned)
    if pairs:
        raise TypeError(
            f"{name} returned {pairs} (node, value) pairs among {len(returned) - pairs} other items: "
            "return either the values in the nodes' order or a (node, value) pair for every node"
        )
    if len(returned) != len(nodes):
        raise ValueError(f"{name} returned {len(returned)} values for {len(nodes)} nodes")
    return list(returned)


def _is_pair(item: object) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Node)


def _values_by_key(name: str, nodes: Sequence[Node], pairs: Iterable[tuple[Node, Any]]) -> list[Any]:
    by_key: dict[str, Any] = {}
    for node, value in pairs:
        if not isinstance(node, Node):
            raise TypeError(f"{name} returned a mapping whose key {node!r} is not a node")
        by_key[node.full_key()] = value
    absent = [node for node in nodes if node.full_key() not in by_key]
    if absent:
        shown = ", ".join(repr(node) for node in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        raise ValueError(f"{name} returned no value for {len(absent)} of {len(nodes)} nodes: {shown}{more}")
    return [by_key[node.full_key()] for node in nodes]


async def _load_many(config: NodeConfig, nodes: Sequence[Node]) -> Sequence[Any]:
    metrics = config.metrics
    started = time.perf_counter_ns()
    try:
        values = values_in_order(config.node_class, nodes, await config.node_class.load_all(nodes))
    except BaseException:
        metrics._load_failures += len(nodes)
        metrics._load_time_ns += time.perf_counter_ns() - started
        raise
    metrics._load_successes += len(nodes)
    metrics._load_time_ns += time.perf_counter_ns() - started
    return values


# ---------------------------------------------------------------- fetching (in tasks of their own)


async def _read_remote_tiers(
    config: NodeConfig, flights: Mapping[str, singleflight.Flight]
) -> tuple[list[str], list[tuple[int, dict[str, Any], dict[str, bytes]]]]:
    """Read the tiers after the leading local ones, one batch per tier; failures are misses.

    Each key found is written into the local tiers before it, then resolved.
    Returns the keys no tier has and the back-fills still to write remotely.
    """
    tiers = config.tiers
    remaining = list(flights)
    backfills: list[tuple[int, dict[str, Any], dict[str, bytes]]] = []
    for index in range(config.local_prefix, len(tiers)):
        if not remaining:
            break
        tier = tiers[index]
        raws: dict[str, bytes] = {}
        if tier.local:
            try:
                found = typing.cast(LocalStorage, tier.storage).get_many_sync(remaining)
            except Exception as error:
                storage_failed(config, tier, "read", error, len(remaining))
                continue
        else:
            read = await read_remote(config, tier, remaining)
            if read is None:
                continue
            raws = read
            found = decode_found(config, tier, raws)
        if not found:
            continue
        if index > 0:
            _fill_before(config, index, flights, found, raws, backfills)
        for key, value in found.items():
            flights[key].resolve(value, True)
        if len(found) == len(remaining):
            return [], backfills
        remaining = list(itertools.filterfalse(found.__contains__, remaining))
    return remaining, backfills


def _fill_before(
    config: NodeConfig,
    index: int,
    flights: Mapping[str, singleflight.Flight],
    found: dict[str, Any],
    raws: dict[str, bytes],
    backfills: list[tuple[int, dict[str, Any], dict[str, bytes]]],
) -> None:
    """Write what tier ``index`` had into the local tiers before it; queue it for the remote ones."""
    values = {key: value for key, value in found.items() if not flights[key].stale}
    write_local(config, config.tiers[:index], values)
    if values and index > config.local_prefix:
        backfills.append((index, values, {key: raws[key] for key in values if key in raws}))


async def _write_backfills(
    config: NodeConfig, backfills: list[tuple[int, dict[str, Any], dict[str, bytes]]]
) -> None:
    for index, values, raws in backfills:
        await write_remotes(config, config.tiers[:index], values, raws)


def want(
    table: singleflight.FlightTable, config: NodeConfig, key: str, node: Node, load: Loader | None
) -> singleflight.Flight:
    """Enter a flight for ``key``; the keys wanted in one loop turn are fetched by one task."""
    flight = singleflight.Flight(source=(node, load))
    if _changing and key in _changing:
        flight.stale = True
    table.flights[key] = flight
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
    try:
        missing, backfills = await _read_remote_tiers(config, group)
        for key in missing:
            flight = group[key]
            flight.task = table.spawn(_load_and_write(table, config, key, flight))
            handed_over.add(key)
        await _write_backfills(config, backfills)
    except BaseException as caught:  # delivered to every waiter by finish()
        error = caught
        if not isinstance(caught, Exception):
            raise
    finally:
        table.finish(((k, f) for k, f in group.items() if k not in handed_over), error)


async def _load_and_write(
    table: singleflight.FlightTable, config: NodeConfig, key: str, flight: singleflight.Flight
) -> None:
    """Load one key from its source, answer its waiters, write it into every tier."""
    # The flight does not keep the node through the write-back (see fetch_many).
    (node, load), flight.source = flight.source, None
    error: BaseException | None = None
    try:
        value = await load_one(config, node, load)
        del node, load
        write = not flight.stale and _admitted(config, key)
        if write:
            write_local(config, config.tiers, {key: value})
        flight.resolve(value, False)
        if write:
            await write_remotes(config, config.tiers, {key: value})
    except BaseException as caught:
        error = caught
        if not isinstance(caught, Exception):
            raise
    finally:
        table.finish(((key, flight),), error)


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
    only that key's waiters.
    """
    error: BaseException | None = None
    try:
        missing, backfills = await _read_remote_tiers(config, flights)
        nodes = in_order(wanted, missing)
        # Under load thousands of fetches wait for their write-back: holding the
        # caller's nodes until then only feeds the garbage collector.
        del wanted
        loaded: dict[str, Any] = {}
        if missing:
            if config.own_load_all:
                error = await _load_batch(config, missing, nodes, flights, loaded)
            else:
                await _load_each(config, missing, nodes, flights, loaded)
        del nodes
        await _write_backfills(config, backfills)
        await write_remotes(config, config.tiers, loaded)
    except BaseException as caught:
        error = caught
        if not isinstance(caught, Exception):
            raise
    finally:
        table.finish(flights.items(), error)


async def _load_batch(
    config: NodeConfig,
    missing: list[str],
    nodes: list[Node],
    flights: Mapping[str, singleflight.Flight],
    loaded: dict[str, Any],
) -> Exception | None:
    """Load ``nodes`` with the class's ``load_all``; resolve their flights and write the local tiers.

    What the remote tiers are to get goes into ``loaded``. Returns the
    exception of a failed ``load_all``: the caller fails every flight with it.
    """
    try:
        results = await _load_many(config, nodes)
    except Exception as caught:
        return caught
    for key, value in zip(missing, results, strict=True):
        if not flights[key].stale and _admitted(config, key):
            loaded[key] = value
    write_local(config, config.tiers, loaded)
    for key, value in zip(missing, results, strict=True):
        flights[key].resolve(value, False)
    return None


async def _load_each(
    config: NodeConfig,
    missing: list[str],
    nodes: list[Node],
    flights: Mapping[str, singleflight.Flight],
    loaded: dict[str, Any],
) -> None:
    """Load each of ``nodes`` by itself, concurrently, each counted on its own; then answer each
    flight with its own outcome and write the local tiers.

    What the remote tiers are to get goes into ``loaded``. A load's exception
    fails its own flight only.
    """
    if len(nodes) == 1:
        outcomes = [await _try_load(config, nodes[0])]
    else:
        outcomes = await asyncio.gather(*_try_loads(config, nodes))
    for key, (value, error) in zip(missing, outcomes, strict=True):
        if error is None and not flights[key].stale and _admitted(config, key):
            loaded[key] = value
    write_local(config, config.tiers, loaded)
    for key, (value, error) in zip(missing, outcomes, strict=True):
        if error is None:
            flights[key].resolve(value, False)
        else:
            flights[key].fail(error)


async def _try_load(config: NodeConfig, node: Node) -> tuple[Any, Exception | None]:
    """``(value, None)`` from the node's source, or ``(None, its exception)``."""
    try:
        return await load_one(config, node, None), None
    except Exception as error:
        return None, error


def _try_loads(
    config: NodeConfig, nodes: list[Node]
) -> list[Coroutine[Any, Any, tuple[Any, Exception | None]]]:
    return [_try_load(config, node) for node in nodes]


# Comprehensions in helpers of their own: inside a coroutine, each variable a
# comprehension reads becomes a cell object kept for the whole call.


def in_order(values: Mapping[str, Any], keys: list[str]) -> list[Any]:
    return [values[key] for key in keys]
