"""The source: calling a node's ``load`` (or ``load_fn``) and its class's ``load_all``.

Each call is timed and counted in the node's stats, and its value becomes a
fresh entry (loaded now, with the time the load took). ``load_all`` may
answer in three forms (``values_in_order``); anything else is an error,
never a wrong value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cacheme.entry import Entry
from cacheme.node import Node

if TYPE_CHECKING:
    from cacheme.config import NodeConfig

__all__ = [
    "LoadHook",
    "LoadInfo",
    "Loader",
    "add_load_hook",
    "call_source",
    "load_failed",
    "load_many",
    "load_one",
    "loaded",
    "values_in_order",
]

logger = logging.getLogger("cacheme")


@dataclass(frozen=True)
class LoadInfo:
    """One call of a source, as load hooks see it: the node class's qualified name, the full key
    (None for a class's ``load_all``) and how many nodes the call loads."""

    node: str
    key: str | None
    size: int


# Called as a load starts; its context manager is entered around the load, in the task that
# runs it, and exited when it ends (with the load's exception, if it raised).
LoadHook = Callable[[LoadInfo], AbstractContextManager[None]]
_hooks: list[LoadHook] = []


def add_load_hook(hook: LoadHook) -> Callable[[], None]:
    """Run ``hook`` around every source load from now on (tracing, say); returns its remover.

    A hook that raises is logged and skipped: it never fails a load. With no
    hook (the default), a load costs what it did.
    """
    _hooks.append(hook)

    def remove() -> None:
        if hook in _hooks:
            _hooks.remove(hook)

    return remove


async def _observed(info: LoadInfo, load: Awaitable[Any]) -> Any:
    """``await load`` inside the context of each load hook."""
    entered: list[AbstractContextManager[None]] = []
    for hook in list(_hooks):
        try:
            context = hook(info)
            context.__enter__()
        except Exception:
            logger.exception("cacheme: load hook %r failed as the load of %s began; skipped", hook, info.node)
            continue
        entered.append(context)
    try:
        value = await load
    except BaseException as error:
        _leave(entered, info, error)
        raise
    _leave(entered, info, None)
    return value


def _leave(entered: list[AbstractContextManager[None]], info: LoadInfo, error: BaseException | None) -> None:
    for context in reversed(entered):
        try:
            if error is None:
                context.__exit__(None, None, None)
            else:
                context.__exit__(type(error), error, error.__traceback__)
        except Exception:
            logger.exception("cacheme: load hook %r failed as the load of %s ended", context, info.node)


# A source used instead of ``node.load()``: called with the node (``get(node, load_fn)``, Memoize).
Loader = Callable[[Any], Awaitable[Any]]


async def load_one(config: NodeConfig, node: Node, load: Loader | None) -> Entry:
    """The node's value from its source, as a fresh entry (loaded now, with its load time)."""
    started = time.perf_counter_ns()
    try:
        value = await call_source(config, node, load)
    except BaseException:
        load_failed(config, started)
        raise
    return loaded(config, started, value)


def call_source(config: NodeConfig, node: Node, load: Loader | None) -> Awaitable[Any]:
    """What to await for the node's value: ``node.load()`` or ``load(node)``, inside the load
    hooks if there are any. Time it with ``loaded`` or ``load_failed`` (``load_one`` does all three)."""
    if _hooks:
        info = LoadInfo(config.node_class.__qualname__, node.full_key(), 1)
        return _observed(info, node.load() if load is None else load(node))
    return node.load() if load is None else load(node)


def loaded(config: NodeConfig, started_ns: int, value: Any) -> Entry:
    """Count a load begun at ``started_ns`` (``time.perf_counter_ns()``) that returned ``value``;
    the value as a fresh entry."""
    elapsed = _count(config, started_ns, 1, True)
    return Entry(value, time.time(), elapsed / 1e9, None)


def load_failed(config: NodeConfig, started_ns: int, count: int = 1) -> None:
    """Count a load of ``count`` nodes begun at ``started_ns`` that raised."""
    _count(config, started_ns, count, False)


def _count(config: NodeConfig, started_ns: int, count: int, succeeded: bool) -> int:
    """Count a load of ``count`` nodes begun at ``started_ns`` in the node's stats; its nanoseconds."""
    elapsed = time.perf_counter_ns() - started_ns
    metrics = config.metrics
    if succeeded:
        metrics._load_successes += count
    else:
        metrics._load_failures += count
    metrics._load_time_ns += elapsed
    metrics.observe_loads(elapsed, count)
    return elapsed


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


async def load_many(config: NodeConfig, nodes: Sequence[Node]) -> list[Entry]:
    """The nodes' values from the class's ``load_all``, as fresh entries (the batch's time each)."""
    started = time.perf_counter_ns()
    try:
        if _hooks:
            info = LoadInfo(config.node_class.__qualname__, None, len(nodes))
            returned = await _observed(info, config.node_class.load_all(nodes))
        else:
            returned = await config.node_class.load_all(nodes)
        values = values_in_order(config.node_class, nodes, returned)
    except BaseException:
        load_failed(config, started, len(nodes))
        raise
    elapsed = _count(config, started, len(nodes), True)
    return _fresh_entries(values, time.time(), elapsed / 1e9)


def _fresh_entries(values: list[Any], loaded_at: float, load_time: float) -> list[Entry]:
    return [Entry(value, loaded_at, load_time, None) for value in values]
