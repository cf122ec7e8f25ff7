"""The engine: reads a node's chain of tiers, loads on a miss, writes back.

Tiers are read left to right; a hit in tier i back-fills tiers 0..i-1; a full
miss loads from the source (once, however many requests want the key: see
singleflight) and writes every tier. Storage failures never fail a request:
a failed read is a miss, a failed write is skipped, both logged and counted.
A loader's own exception is the caller's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

import pydantic

from cacheme import registry, singleflight
from cacheme.chain import (
    Tier,
    decode_found,
    delete,
    local_read_failed,
    read_remote,
    storage_failed,
    write_local,
    write_remotes,
)
from cacheme.doorkeeper import DoorKeeper
from cacheme.errors import NodeDefinitionError
from cacheme.node import Node
from cacheme.serializer import MsgPackSerializer, Serializer
from cacheme.stats import Metrics
from cacheme.storage import MISSING, LocalStorage

__all__ = ["get", "get_all", "invalidate", "refresh", "stats", "NodeConfig"]

logger = logging.getLogger("cacheme")

Loader = Callable[[], Awaitable[Any]]

# The keys being refreshed or invalidated (the same dict as singleflight.changing, never rebound).
# A flight made for one of them is made stale: it may read the value being replaced.
_changing = singleflight.changing


class NodeConfig:
    """A node class's Meta, resolved against the registered storages."""

    __slots__ = (
        "adapter",
        "doorkeeper",
        "first_local",
        "generation",
        "leading_locals",
        "local_prefix",
        "metrics",
        "node_class",
        "own_load_all",
        "serializer",
        "tiers",
    )

    def __init__(self, node_class: type[Node]) -> None:
        meta = node_class.Meta
        name = node_class.__qualname__
        if not meta.caches:
            raise NodeDefinitionError(f"{name}.Meta.caches is empty: list at least one cacheme.Cache")
        if node_class.key is Node.key:
            raise NodeDefinitionError(f"{name} must define key(self) -> str")
        self.node_class = node_class
        self.metrics: Metrics = node_class._cacheme_metrics
        self.generation = registry.generation()
        self.tiers = [Tier(c.storage, registry.lookup(c.storage, name), c.ttl) for c in meta.caches]
        first = self.tiers[0].storage
        self.first_local: LocalStorage | None = first if isinstance(first, LocalStorage) else None
        # The local tiers at the head of the chain, read synchronously before any await.
        self.leading_locals: list[tuple[LocalStorage, Any]] = []
        for tier in self.tiers:
            if not isinstance(tier.storage, LocalStorage):
                break
            self.leading_locals.append((tier.storage, tier.ttl))
        self.local_prefix = len(self.leading_locals)
        serializer: Serializer | None = meta.serializer
        if serializer is None and any(not tier.local for tier in self.tiers):
            serializer = MsgPackSerializer()
        self.serializer = serializer
        self.doorkeeper: DoorKeeper | None = meta.doorkeeper
        self.adapter = _return_adapter(node_class, serializer)
        # Whether get_all loads with the class's own load_all (one batch, one outcome) rather
        # than each node's load() on its own (see _fetch_many).
        self.own_load_all = _defines_load_all(node_class)


def _defines_load_all(node_class: type[Node]) -> bool:
    """Whether ``node_class`` or a base class other than ``Node`` defines ``load_all``."""
    for klass in node_class.__mro__:
        if "load_all" in klass.__dict__:
            return klass is not Node
    return False


def _return_adapter(
    node_class: type[Node], serializer: Serializer | None
) -> pydantic.TypeAdapter[Any] | None:
    """What turns plain data read back by JSON/MsgPack into the loader's return type."""
    if serializer is None or serializer.restores_types:
        return None
    source: Any = node_class.load
    if source is Node.load:
        source = node_class.__dict__.get("_cacheme_memoized")
        if source is None:
            return None
    try:
        hint = typing.get_type_hints(source).get("return")
    except Exception:
        logger.warning("cacheme: cannot resolve the return annotation of %r; values stay plain", source)
        return None
    if hint is None or hint is Any or hint is object:
        return None
    return pydantic.TypeAdapter(hint)


def configure(node_class: type[Node]) -> NodeConfig:
    """The node class's resolved config, rebuilt when storages were (re)registered."""
    config: NodeConfig | None = node_class.__dict__.get("_cacheme_config")
    if config is None or config.generation != registry._generation:
        config = NodeConfig(node_class)
        node_class._cacheme_config = config
    return config


def _admitted(config: NodeConfig, key: str) -> bool:
    """The doorkeeper's verdict on caching a freshly loaded key."""
    doorkeeper = config.doorkeeper
    if doorkeeper is None or doorkeeper.contains(key):
        return True
    doorkeeper.put(key)
    return False


# ---------------------------------------------------------------- loading


async def _load_one(config: NodeConfig, node: Node, load: Loader | None) -> Any:
    metrics = config.metrics
    started = time.perf_counter_ns()
    try:
        value = await (load() if load is not None else node.load())
    except BaseException:
        metrics._load_failures += 1
        metrics._load_time_ns += time.perf_counter_ns() - started
        raise
    metrics._load_successes += 1
    metrics._load_time_ns += time.perf_counter_ns() - started
    return value


async def _load_many(config: NodeConfig, nodes: Sequence[Node]) -> Sequence[Any]:
    metrics = config.metrics
    started = time.perf_counter_ns()
    try:
        values = await config.node_class.load_all(nodes)
        if len(values) != len(nodes):
            raise ValueError(
                f"{config.node_class.__qualname__}.load_all returned {len(values)} values "
                f"for {len(nodes)} nodes"
            )
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


def _want(
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
    # The flight does not keep the node through the write-back (see _fetch_many).
    (node, load), flight.source = flight.source, None
    error: BaseException | None = None
    try:
        value = await _load_one(config, node, load)
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


async def _fetch_many(
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
        nodes = _in_order(wanted, missing)
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
        return await _load_one(config, node, None), None
    except Exception as error:
        return None, error


def _try_loads(
    config: NodeConfig, nodes: list[Node]
) -> list[Coroutine[Any, Any, tuple[Any, Exception | None]]]:
    return [_try_load(config, node) for node in nodes]


# ---------------------------------------------------------------- public API


async def get(node: Node, load: Loader | None = None) -> Any:
    """The node's value: from the first tier that has it, else from its loader.

    ``load`` replaces ``node.load()`` as the source (Memoize uses it).
    """
    config: NodeConfig | None = node._cacheme_config
    if config is None or config.generation != registry._generation:
        config = configure(type(node))
    key = node.full_key()
    metrics = config.metrics
    metrics._requests += 1
    first = config.first_local
    if first is not None:
        try:
            value = first.get_sync(key)
        except Exception as error:
            value = local_read_failed(config, 0, error)
        if value is not MISSING:
            metrics._hits += 1
            return value
        if config.local_prefix > 1:
            value = _read_leading_locals(config, key, 1)
            if value is not MISSING:
                metrics._hits += 1
                return value
    table = singleflight.table()
    flight = table.flights.get(key)
    if flight is None:
        flight = _want(table, config, key, node, load)
    elif flight.outcome is not None:
        # Fetched already, being written back: this request caused no load.
        metrics._hits += 1
        return flight.outcome[0]
    value, from_cache = await flight.wait()
    if from_cache:
        metrics._hits += 1
    return value


def _read_leading_locals(config: NodeConfig, key: str, start: int) -> Any:
    """The key's value from the leading local tiers (from ``start``), back-filling those before it."""
    leading = config.leading_locals
    for index in range(start, len(leading)):
        try:
            value = leading[index][0].get_sync(key)
        except Exception as error:
            value = local_read_failed(config, index, error)
        if value is not MISSING:
            write_local(config, config.tiers[:index], {key: value})
            return value
    return MISSING


async def get_all(nodes: Sequence[Node]) -> list[Any]:
    """The values of ``nodes`` (all of one class), in their order, duplicates included.

    Each tier is read with one batch operation; what no tier has is loaded
    with one ``load_all`` call and written back in batch.
    """
    if not nodes:
        return []
    node_class = type(nodes[0])
    config: NodeConfig | None = node_class._cacheme_config
    if config is None or config.generation != registry._generation:
        config = configure(node_class)
    keys: list[str] = []
    results: dict[str, Any] = {}  # the answers known so far
    missing: dict[str, Node] = {}  # the keys no leading local tier has
    first = config.first_local
    deeper = config.local_prefix > 1
    for node in nodes:
        if type(node) is not node_class:
            raise TypeError(
                "get_all takes nodes of one class; "
                f"got {node_class.__qualname__} and {type(node).__qualname__}"
            )
        key = node.full_key()
        keys.append(key)
        if first is None:
            missing[key] = node
        elif key not in results:
            try:
                value = first.get_sync(key)
            except Exception as error:
                value = local_read_failed(config, 0, error)
            if value is MISSING and deeper:
                value = _read_leading_locals(config, key, 1)
            if value is MISSING:
                missing[key] = node
            else:
                results[key] = value
    metrics = config.metrics
    metrics._requests += len(nodes)
    if not missing:
        metrics._hits += len(nodes)
        return _in_order(results, keys)
    hit_keys = set(results)
    table = singleflight.table()
    flights = table.flights
    started: dict[str, singleflight.Flight] = {}  # the keys this call fetches
    waiting: dict[str, singleflight.Flight] = {}  # those and the keys other requests are fetching
    task: asyncio.Task[None] | None = None
    for key in missing:
        flight = flights.get(key)
        if flight is None:
            if task is None:
                # Its first step runs next turn, when ``started`` is complete.
                task = table.spawn(_fetch_many(table, config, missing, started))
            flight = singleflight.Flight(task)
            if _changing and key in _changing:
                flight.stale = True
            waiting[key] = flights[key] = started[key] = flight
        elif flight.outcome is not None:  # fetched already: this request caused no load
            results[key] = flight.outcome[0]
            hit_keys.add(key)
        else:
            waiting[key] = flight
    for key, flight in waiting.items():
        value, from_cache = flight.outcome or await flight.wait()
        results[key] = value
        if from_cache:
            hit_keys.add(key)
    if hit_keys:
        metrics._hits += _count_in(keys, hit_keys)
    return _in_order(results, keys)


# Comprehensions in helpers of their own: inside a coroutine, each variable a
# comprehension reads becomes a cell object kept for the whole call.


def _in_order(values: Mapping[str, Any], keys: list[str]) -> list[Any]:
    return [values[key] for key in keys]


def _count_in(keys: list[str], chosen: set[str]) -> int:
    return sum(1 for key in keys if key in chosen)


async def _settle(flight: singleflight.Flight | None) -> None:
    """Wait for the write-back of a fetch that already answered its callers, if one is running.

    So that what ``refresh``/``invalidate`` writes or deletes next lands after it.
    """
    if flight is not None and flight.done:
        await singleflight.settle(flight)


async def invalidate(node: Node) -> None:
    """Remove the node's key from every tier.

    A fetch of the key that races it answers its own callers but writes no
    tier, and once ``invalidate`` has returned no request joins it.
    """
    config = configure(type(node))
    key = node.full_key()
    racing = singleflight.begin_change(key)
    try:
        await _settle(racing)
        for tier in config.tiers:
            await delete(config, tier, key)
    finally:
        singleflight.end_change(key)


async def refresh(node: Node) -> Any:
    """Load the node from its source and overwrite every tier with the value.

    A fetch of the key that races it answers its own callers but writes no
    tier, and once ``refresh`` has returned no request joins it: every tier of
    this process serves the new value (but a tier whose write failed keeps what it had).
    """
    config = configure(type(node))
    key = node.full_key()
    racing = singleflight.begin_change(key)
    try:
        await _settle(racing)
        value = await _load_one(config, node, None)
        write_local(config, config.tiers, {key: value})
        await write_remotes(config, config.tiers, {key: value}, write_back=False)
    finally:
        singleflight.end_change(key)
    return value


def stats(node_class: type[Node]) -> Metrics:
    """The counters of one node class."""
    if not (isinstance(node_class, type) and issubclass(node_class, Node)):
        raise TypeError(f"stats() takes a node class, got {node_class!r}")
    return node_class._cacheme_metrics
