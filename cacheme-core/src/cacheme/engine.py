"""The engine: reads a node's chain of tiers, loads on a miss, writes back.

Tiers are read left to right; a hit in tier i back-fills tiers 0..i-1; a full
miss loads from the source (once, however many requests want the key: see
singleflight) and writes every tier. Storage failures never fail a request:
a failed read is a miss, a failed write is skipped, both logged and counted.
A loader's own exception is the caller's.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from cacheme import node as node_module
from cacheme import registry, singleflight
from cacheme.chain import delete, local_read_failed, write_local, write_remotes
from cacheme.config import NodeConfig, configure, not_a_node
from cacheme.entry import Entry
from cacheme.fetch import answers, fetch_many, in_order, want
from cacheme.node import Loadable, Node
from cacheme.source import Loader, load_one
from cacheme.stats import Metrics
from cacheme.storage import MISSING

__all__ = ["get", "get_all", "invalidate", "refresh", "stats", "NodeConfig"]

_changing = singleflight.changing  # see fetch._changing

R = TypeVar("R")
N = TypeVar("N", bound=Node)


# ---------------------------------------------------------------- public API


@typing.overload
async def get(node: Loadable[R], load_fn: None = None) -> R: ...


@typing.overload
async def get(node: N, load_fn: Callable[[N], Awaitable[R]]) -> R: ...


async def get(node: Any, load_fn: Loader | None = None) -> Any:
    """The node's value: from the first tier that has it, else from its source.

    The source is ``node.load()``, or ``await load_fn(node)`` when ``load_fn``
    is given (cacheme 0.3.0's form). The value's type is ``load``'s (or
    ``load_fn``'s) return type, for type checkers too.
    """
    try:
        config: NodeConfig | None = node._cacheme_config
    except AttributeError:
        raise not_a_node("get", node) from None
    if config is None or config.generation != registry._generation:
        config = configure(type(node))
    key = node._cacheme_key  # full_key()'s own check, inline: the key it built for this prefix
    if node._cacheme_key_prefix is not node_module._prefix:
        key = node.full_key()
    metrics = config.metrics
    expired: Entry | None = None  # an entry of the local tiers that only stale_if_error may serve
    first = config.first_local
    if first is not None:
        try:
            entry = first.get_sync(key)
        except Exception as error:
            entry = local_read_failed(config, 0, error)
        if entry is not MISSING:
            if config.policy is None or answers(config, key, node, load_fn, entry):
                metrics._local_hits += 1  # a request and a hit (see Metrics)
                return entry.value
            expired = entry
        if config.local_prefix > 1:
            entry = _read_leading_locals(config, key, 1)
            if entry is not MISSING:
                if config.policy is None or answers(config, key, node, load_fn, entry):
                    metrics._local_hits += 1
                    return entry.value
                expired = entry
    metrics._requests += 1
    table = singleflight.table()
    flight = table.flights.get(key)
    if flight is None:
        flight = want(table, config, key, node, load_fn)
    elif flight.outcome is not None:
        # Fetched already, being written back: this request caused no load.
        metrics._hits += 1
        return flight.outcome[0]
    if expired is not None:
        flight.offer_fallback(expired)
    value, from_cache = await flight.wait()
    if from_cache:
        metrics._hits += 1
    return value


def _read_leading_locals(config: NodeConfig, key: str, start: int) -> Any:
    """The key's entry in the leading local tiers (from ``start``), back-filling those before it."""
    leading = config.leading_locals
    epoch = singleflight.epoch
    for index in range(start, len(leading)):
        try:
            entry = leading[index][0].get_sync(key)
        except Exception as error:
            entry = local_read_failed(config, index, error)
        if entry is not MISSING:
            write_local(config, config.tiers[:index], {key: entry}, epoch)
            return entry
    return MISSING


async def get_all(nodes: Sequence[Loadable[R]]) -> list[R]:
    """The values of ``nodes`` (all of one class), in their order, duplicates included.

    Each tier is read with one batch operation; what no tier has is loaded
    (each node's ``load()`` on its own, or one call of the class's own
    ``load_all``) and written back in batch.
    """
    if not nodes:
        return []
    members = typing.cast("Sequence[Node]", nodes)  # Loadable is how type checkers see them
    node_class = type(members[0])
    try:
        config: NodeConfig | None = node_class._cacheme_config
    except AttributeError:
        raise not_a_node("get_all", members[0]) from None
    if config is None or config.generation != registry._generation:
        config = configure(node_class)
    keys: list[str] = []
    results: dict[str, Any] = {}  # the answers known so far
    missing: dict[str, Node] = {}  # the keys no leading local tier has
    expired: dict[str, Entry] = {}  # entries of the local tiers that only stale_if_error may serve
    first = config.first_local
    deeper = config.local_prefix > 1
    policy = config.policy
    for node in members:
        if type(node) is not node_class:
            raise TypeError(
                "get_all takes nodes of one class; "
                f"got {node_class.__qualname__} and {type(node).__qualname__}"
            )
        key = node.full_key()
        keys.append(key)
        if first is None:
            missing[key] = node
        elif key not in results and key not in missing:
            try:
                entry = first.get_sync(key)
            except Exception as error:
                entry = local_read_failed(config, 0, error)
            if entry is MISSING and deeper:
                entry = _read_leading_locals(config, key, 1)
            if entry is MISSING:
                missing[key] = node
            elif policy is None or answers(config, key, node, None, entry):
                results[key] = entry.value
            else:
                missing[key] = node
                expired[key] = entry
    metrics = config.metrics
    metrics._requests += len(nodes)
    if not missing:
        metrics._hits += len(nodes)
        return in_order(results, keys)
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
                task = table.spawn(fetch_many(table, config, missing, started))
            flight = singleflight.Flight(task)
            if _changing and key in _changing:
                flight.stale = True
            waiting[key] = flights[key] = started[key] = flight
        elif flight.outcome is not None:  # fetched already: this request caused no load
            results[key] = flight.outcome[0]
            hit_keys.add(key)
        else:
            waiting[key] = flight
        if expired and key in expired:
            flight.offer_fallback(expired[key])
    for key, flight in waiting.items():
        value, from_cache = flight.outcome or await flight.wait()
        results[key] = value
        if from_cache:
            hit_keys.add(key)
    if hit_keys:
        metrics._hits += _count_in(keys, hit_keys)
    return in_order(results, keys)


# Comprehensions in helpers of their own: inside a coroutine, each variable a
# comprehension reads becomes a cell object kept for the whole call.


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
    tier, and once ``invalidate`` has returned no request joins it. Every
    other process whose local tiers listen on the node's bus drops the key.
    """
    config = configure(type(node))
    key = node.full_key()
    racing = singleflight.begin_change(key)
    try:
        await _settle(racing)
        for tier in config.tiers:
            await delete(config, tier, key)
        await _announce(config, key)
    finally:
        singleflight.end_change(key)


async def refresh(node: Loadable[R]) -> R:
    """Load the node from its source and overwrite every tier with the value.

    A fetch of the key that races it answers its own callers but writes no
    tier, and once ``refresh`` has returned no request joins it: every tier of
    this process serves the new value (but a tier whose write failed keeps what it had).
    Every other process whose local tiers listen on the node's bus drops the key.
    """
    config = configure(type(node))  # type: ignore[arg-type]  # Loadable: how type checkers see a node
    key = node.full_key()
    racing = singleflight.begin_change(key)
    try:
        await _settle(racing)
        epoch = singleflight.epoch
        entry = await load_one(config, typing.cast(Node, node), None)
        write_local(config, config.tiers, {key: entry}, epoch)
        await write_remotes(config, config.tiers, {key: entry}, write_back=False)
        await _announce(config, key)
    finally:
        singleflight.end_change(key)
    value: R = entry.value
    return value


async def _announce(config: NodeConfig, key: str) -> None:
    """Tell the other processes listening on the node's buses that ``key`` changed (see cacheme.bus)."""
    for hub in config.hubs:
        await hub.announce(key)


def stats(node_class: type[Node]) -> Metrics:
    """The counters of one node class."""
    if not (isinstance(node_class, type) and issubclass(node_class, Node)):
        raise TypeError(f"stats() takes a node class, got {node_class!r}")
    return node_class._cacheme_metrics
