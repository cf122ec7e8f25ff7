"""The engine: reads a node's chain of tiers, loads on a miss, writes back.

Tiers are read left to right; a hit in tier i back-fills tiers 0..i-1; a full
miss loads from the source (once, however many requests want the key: see
singleflight) and writes every tier. Storage failures never fail a request:
a failed read is a miss, a failed write is skipped, both logged and counted.
A loader's own exception is the caller's.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pydantic

from cacheme import registry, singleflight
from cacheme.chain import Tier, delete, local_read_failed, write_local, write_remotes
from cacheme.doorkeeper import DoorKeeper
from cacheme.errors import NodeDefinitionError
from cacheme.fetch import Loader, fetch_many, in_order, load_one, want
from cacheme.node import Loadable, Node
from cacheme.serializer import MsgPackSerializer, Serializer
from cacheme.stats import Metrics
from cacheme.storage import MISSING, LocalStorage

__all__ = ["get", "get_all", "invalidate", "refresh", "stats", "NodeConfig"]

logger = logging.getLogger("cacheme")

_changing = singleflight.changing  # see fetch._changing

R = TypeVar("R")
N = TypeVar("N", bound=Node)


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
        # than each node's load() on its own (see fetch_many).
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
        # Memoize's function, on this class or (to_node returning a subclass) a base class.
        source = getattr(node_class, "_cacheme_memoized", None)
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


def _not_a_node(function: str, given: object) -> TypeError:
    return TypeError(f"cacheme.{function} takes cacheme.Node instances, got {given!r}")


def configure(node_class: type[Node]) -> NodeConfig:
    """The node class's resolved config, rebuilt when storages were (re)registered."""
    if not (isinstance(node_class, type) and issubclass(node_class, Node)):
        raise _not_a_node("this function", node_class)
    config: NodeConfig | None = node_class.__dict__.get("_cacheme_config")
    if config is None or config.generation != registry._generation:
        config = NodeConfig(node_class)
        node_class._cacheme_config = config
    return config


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
        raise _not_a_node("get", node) from None
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
        flight = want(table, config, key, node, load_fn)
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
        raise _not_a_node("get_all", members[0]) from None
    if config is None or config.generation != registry._generation:
        config = configure(node_class)
    keys: list[str] = []
    results: dict[str, Any] = {}  # the answers known so far
    missing: dict[str, Node] = {}  # the keys no leading local tier has
    first = config.first_local
    deeper = config.local_prefix > 1
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


async def refresh(node: Loadable[R]) -> R:
    """Load the node from its source and overwrite every tier with the value.

    A fetch of the key that races it answers its own callers but writes no
    tier, and once ``refresh`` has returned no request joins it: every tier of
    this process serves the new value (but a tier whose write failed keeps what it had).
    """
    config = configure(type(node))  # type: ignore[arg-type]  # Loadable: how type checkers see a node
    key = node.full_key()
    racing = singleflight.begin_change(key)
    try:
        await _settle(racing)
        value: R = await load_one(config, typing.cast(Node, node), None)
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
