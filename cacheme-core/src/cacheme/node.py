"""Nodes: what is cached, under which key, loaded how, kept where.

A node class is declared by subclassing ``Node``; it becomes a dataclass by
itself (an explicit ``@dataclass`` works too). Its ``Meta`` says where it is
cached. Every node class gets a Meta and a Metrics of its own, never shared
with its parent by inheritance.
"""

from __future__ import annotations

import dataclasses
import difflib
import threading
import weakref
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, ClassVar, Generic, Protocol

from typing_extensions import TypeVar, dataclass_transform

from cacheme.doorkeeper import DoorKeeper
from cacheme.errors import InvalidKeyError, NodeDefinitionError
from cacheme.refresh import Policy
from cacheme.serializer import Serializer
from cacheme.stats import Metrics

__all__ = ["Cache", "Loadable", "Node", "DynamicNode", "build_node", "nodes", "set_prefix", "get_prefix"]

_prefix = "cacheme"


def set_prefix(prefix: str) -> None:
    """Set the first part of every cache key (default ``"cacheme"``).

    Changing it makes every key new: what was cached under the old prefix is
    no longer read.
    """
    global _prefix
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
    _prefix = prefix


def get_prefix() -> str:
    return _prefix


@dataclasses.dataclass(frozen=True)
class Cache:
    """One tier of a node's chain: a registered storage's name and a ttl.

    ``ttl=None`` never expires; otherwise it must be a positive timedelta.
    """

    storage: str
    ttl: timedelta | None

    def __post_init__(self) -> None:
        if not isinstance(self.storage, str) or not self.storage:
            raise NodeDefinitionError(
                f"Cache storage must be a registered storage name, got {self.storage!r}"
            )
        if self.ttl is not None:
            if not isinstance(self.ttl, timedelta):
                raise NodeDefinitionError(f"Cache ttl must be a timedelta or None, got {self.ttl!r}")
            if self.ttl <= timedelta(0):
                raise NodeDefinitionError(f"Cache ttl must be positive, got {self.ttl!r}")


R_co = TypeVar("R_co", covariant=True)
# The value type a node may state, as cacheme 0.3.0 allowed: ``class UserNode(cacheme.Node[User])``.
# ``Node`` alone is ``Node[Any]`` (no "missing type parameters" under mypy --strict).
T = TypeVar("T", default=Any)


class Loadable(Protocol[R_co]):
    """A node as type checkers see it in ``get``, ``get_all`` and ``refresh``: typed by its ``load``.

    Every ``Node`` subclass matches it, with ``R_co`` the return type of its
    ``async def load(self)``, so ``await cacheme.get(UserNode(...))`` is typed
    as what ``UserNode.load`` returns, with nothing written in the node.
    """

    def full_key(self) -> str: ...

    def load(self) -> Awaitable[R_co]: ...


_node_classes: list[weakref.ref[type[Node]]] = []
# Held while the list changes: nodes() may run in an exporter's thread while classes are defined.
_node_classes_lock = threading.Lock()


# Every attribute a node's Meta may set. Anything else (``cache``, ``serialiser``,
# an option of a later version) is a NodeDefinitionError, never silently ignored.
META_OPTIONS = (
    "version",
    "caches",
    "serializer",
    "doorkeeper",
    "refresh_after",
    "early_refresh",
    "stale_if_error",
    "lease",
)


# Attributes of earlier versions' Meta, which cacheme 0.3.0 ignored silently.
_OLD_META_HINTS = {
    "storage": " (cacheme 0.2's single storage, ignored since 0.3.0: list the tiers in "
    "caches = [cacheme.Cache(storage=..., ttl=...)] and delete this line)",
    "metrics": " (set by cacheme, not by you: read the counters with cacheme.stats(NodeClass))",
}


def _check_meta_names(meta: type, name: str) -> None:
    for klass in meta.__mro__:
        if klass is Node.Meta or klass is object:
            continue
        for attribute in vars(klass):
            if attribute.startswith("_") or attribute in META_OPTIONS:
                continue
            close = difflib.get_close_matches(attribute, META_OPTIONS, n=1)
            hint = _OLD_META_HINTS.get(attribute) or (f" (did you mean {close[0]!r}?)" if close else "")
            raise NodeDefinitionError(
                f"{name}.Meta has an attribute cacheme does not know: {attribute!r}{hint}. "
                f"A Meta may set: {', '.join(META_OPTIONS)}"
            )


def lease_milliseconds(lease: object, name: str) -> int | None:
    """``Meta.lease`` in whole milliseconds (None: no lease); a NodeDefinitionError when it is not
    a timedelta of at least a millisecond."""
    if lease is None:
        return None
    if not isinstance(lease, timedelta) or lease < timedelta(milliseconds=1):
        raise NodeDefinitionError(
            f"{name}.Meta.lease must be a timedelta of at least a millisecond (the longest a load may "
            f"hold the key) or None, got {lease!r}"
        )
    return int(lease / timedelta(milliseconds=1))


def _check_meta(cls: type[Node]) -> None:
    meta = cls.Meta
    name = cls.__qualname__
    _check_meta_names(meta, name)
    if not isinstance(meta.version, str):
        raise NodeDefinitionError(f"{name}.Meta.version must be a str, got {meta.version!r}")
    if not isinstance(meta.caches, (list, tuple)) or not all(isinstance(c, Cache) for c in meta.caches):
        raise NodeDefinitionError(f"{name}.Meta.caches must be a list of cacheme.Cache, got {meta.caches!r}")
    serializer = meta.serializer
    if serializer is not None and not isinstance(serializer, Serializer):
        raise NodeDefinitionError(
            f"{name}.Meta.serializer must have dumps(obj) -> bytes and loads(bytes), got {serializer!r}"
        )
    doorkeeper = meta.doorkeeper
    if doorkeeper is not None and not isinstance(doorkeeper, DoorKeeper):
        raise NodeDefinitionError(f"{name}.Meta.doorkeeper must have put(key) and contains(key)")
    Policy.from_meta(meta, name)  # refresh_after, early_refresh, stale_if_error
    if lease_milliseconds(meta.lease, name) is not None and doorkeeper is not None:
        raise NodeDefinitionError(
            f"{name}.Meta sets both lease and doorkeeper: a key the doorkeeper turns away is not "
            "written, so each process waiting for the lease's value would load it again in turn. "
            "Set one of them."
        )


@dataclass_transform()
class Node(Generic[T]):
    """Subclass it, give it fields, ``key()``, ``async load()`` and a ``Meta``.

    Subclasses become dataclasses; dataclass options go in the class line,
    e.g. ``class UserNode(cacheme.Node, frozen=True)``. A plain explicit
    ``@dataclass`` decorator also works. The value type may be stated, as in
    cacheme 0.3.0 (``cacheme.Node[User]``); type checkers take it from
    ``load``'s return annotation anyway.
    """

    class Meta:
        version: ClassVar[str] = ""
        caches: ClassVar[Sequence[Cache]] = []
        serializer: ClassVar[Serializer | None] = None
        doorkeeper: ClassVar[DoorKeeper | None] = None
        # Serve an entry loaded longer ago than this and reload it in the background.
        refresh_after: ClassVar[timedelta | None] = None
        # XFetch's beta: serve and reload early, the likelier the nearer the expiry.
        early_refresh: ClassVar[float | None] = None
        # When a load fails, serve an entry expired less than this long ago instead.
        stale_if_error: ClassVar[timedelta | None] = None
        # One process of the fleet loads a missing key, holding it at most this long (cacheme.lease).
        lease: ClassVar[timedelta | None] = None

    # Whether subclasses are made dataclasses (DynamicNode has its own __init__).
    _cacheme_dataclass: ClassVar[bool] = True
    _cacheme_metrics: ClassVar[Metrics]
    # Filled by the engine on first use (see cacheme.engine.NodeConfig).
    _cacheme_config: ClassVar[Any] = None
    # An instance's full key and the prefix it was built with, set by full_key() (two plain
    # attributes, not a tuple: no object to allocate, and no tuple for the collector to track).
    _cacheme_key: ClassVar[str] = ""
    _cacheme_key_prefix: ClassVar[str | None] = None

    def __init_subclass__(cls, *, frozen: bool = False, eq: bool = True, order: bool = False) -> None:
        super().__init_subclass__()
        if "Meta" not in cls.__dict__:
            # A Meta of its own, so that changing it never changes the parent's.
            own_meta = type("Meta", (cls.Meta,), {"__qualname__": f"{cls.__qualname__}.Meta"})
            setattr(cls, "Meta", own_meta)  # noqa: B010 - mypy refuses assigning to a nested class
        elif not issubclass(cls.__dict__["Meta"], Node.Meta):
            own = cls.__dict__["Meta"]
            setattr(cls, "Meta", type("Meta", (own, Node.Meta), {"__qualname__": own.__qualname__}))  # noqa: B010
        _check_meta(cls)
        cls._cacheme_metrics = Metrics()
        cls._cacheme_config = None
        if cls._cacheme_dataclass and "__init__" not in cls.__dict__:
            dataclasses.dataclass(cls, frozen=frozen, eq=eq, order=order)
        with _node_classes_lock:
            _node_classes.append(weakref.ref(cls))

    def key(self) -> str:
        raise NotImplementedError(f"{type(self).__qualname__} must define key(self) -> str")

    async def load(self) -> T:
        raise NotImplementedError(
            f"{type(self).__qualname__} must define async load(self), or be used through Memoize"
        )

    @classmethod
    async def load_all(cls, nodes: Sequence[Node[Any]]) -> Sequence[Any]:
        """Load many nodes at once; return their values in the same order.

        The default awaits ``load()`` of each node concurrently. Override it
        to load a batch with one query.
        """
        import asyncio

        return await asyncio.gather(*(node.load() for node in nodes))

    def full_key(self) -> str:
        """``{prefix}:{key()}:{Meta.version}``, built once per instance and prefix (define ``key()``
        to shape it; the engine reads the key this method kept without calling it again).

        Raises ``InvalidKeyError`` for a key some storage cannot keep: one with a
        NUL character or a surrogate code point (text that is not valid UTF-8).
        """
        prefix = _prefix
        if self._cacheme_key_prefix is prefix:
            return self._cacheme_key
        key = self.key()
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"{type(self).__qualname__}.key() must return str, got {type(key).__name__}")
        full = f"{prefix}:{key}:{self.Meta.version}"
        if not full.isascii() or "\x00" in full:  # ASCII without NUL: nothing more to check
            _check_storable(type(self), full)
        # Kept on the instance, not as fields: not in eq, repr or asdict. A plain store when the
        # class has no __setattr__ of its own (a frozen dataclass has one: it goes around it).
        try:
            if type(self).__setattr__ is _object_setattr:
                # (ClassVar for type checkers, so that dataclass_transform makes them no fields)
                self._cacheme_key = full  # type: ignore[misc]
                self._cacheme_key_prefix = prefix  # type: ignore[misc]
            else:
                _object_setattr(self, "_cacheme_key", full)
                _object_setattr(self, "_cacheme_key_prefix", prefix)
        except AttributeError:  # a class with __slots__ cannot keep it: its key is built every time
            pass
        return full


_object_setattr = object.__setattr__


def _check_storable(node_class: type[Node], full_key: str) -> None:
    """Raise ``InvalidKeyError`` if ``full_key`` holds a NUL character or a surrogate code point.

    A NUL character cannot be stored by PostgreSQL; a surrogate (a lone half of
    a UTF-16 pair) makes the key invalid UTF-8, which no remote storage stores.
    The error names the node class, shows the key and says what to do.
    """
    try:
        if 0 not in full_key.encode("utf-8"):  # no NUL byte (an int operand: a plain memchr)
            return
        position, problem, why = full_key.index("\x00"), "a NUL character", "which PostgreSQL cannot store"
    except UnicodeEncodeError as error:
        position = error.start
        problem = f"a surrogate code point ({full_key[position]!r})"
        why = "so it is not valid UTF-8 and no remote storage can store it"
    raise InvalidKeyError(
        f"{node_class.__qualname__}'s cache key {full_key!r} has {problem} at index {position}, {why} "
        "(the node would never be cached there). A key must have no NUL character and encode as "
        "UTF-8: escape or hash the part of key() that carries such characters."
    )


class DynamicNode(Node):
    """A node whose key is given directly: ``DynamicNode(key="user:1")``.

    Classes made by ``build_node`` are DynamicNode subclasses; used with
    ``Memoize``, the function being memoized loads the value.
    """

    _cacheme_dataclass: ClassVar[bool] = False

    def __init__(self, key: str) -> None:
        if not isinstance(key, str):
            raise TypeError(f"DynamicNode key must be a str, got {type(key).__name__}")
        self._key = key

    def key(self) -> str:
        return self._key

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(key={self._key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DynamicNode) and type(other) is type(self) and other._key == self._key

    def __hash__(self) -> int:
        return hash((type(self), self._key))


# The classes build_node made, by name, with the arguments they were made with.
_built_nodes: dict[str, tuple[tuple[Any, ...], type[DynamicNode]]] = {}


def build_node(
    name: str,
    version: str,
    caches: Sequence[Cache],
    serializer: Serializer | None = None,
    doorkeeper: DoorKeeper | None = None,
) -> type[DynamicNode]:
    """Make a DynamicNode class with its own Meta, without writing a class.

    Building a name again with the same arguments returns the class built
    first (the same statistics, one entry in ``nodes()``); the same name with
    other arguments is a ``NodeDefinitionError``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise NodeDefinitionError(f"build_node name must be an identifier, got {name!r}")
    arguments = (version, tuple(caches), serializer, doorkeeper)
    built = _built_nodes.get(name)
    if built is not None:
        if not _same_arguments(built[0], arguments):
            raise NodeDefinitionError(
                f"build_node({name!r}) was called before with other arguments: "
                f"{_describe(built[0])}, now {_describe(arguments)}. Give each node its own name."
            )
        return built[1]
    meta = type(
        "Meta",
        (DynamicNode.Meta,),
        {
            "__qualname__": f"{name}.Meta",
            "version": version,
            "caches": list(caches),
            "serializer": serializer,
            "doorkeeper": doorkeeper,
        },
    )
    node_class: type[DynamicNode] = type(name, (DynamicNode,), {"Meta": meta, "__qualname__": name})
    _built_nodes[name] = (arguments, node_class)
    return node_class


def _same_arguments(first: tuple[Any, ...], second: tuple[Any, ...]) -> bool:
    """Equal versions and caches; serializers and doorkeepers of one type with equal settings.

    Settings are the public attributes (a BloomFilter's size and rate, not its bits).
    """
    return first[:2] == second[:2] and all(map(_same_setting, first[2:], second[2:]))


def _same_setting(first: object, second: object) -> bool:
    if first is second:
        return True
    if type(first) is not type(second):
        return False
    if not hasattr(first, "__dict__"):
        return first == second
    return _public_attributes(first) == _public_attributes(second)


def _public_attributes(instance: object) -> dict[str, Any]:
    return {key: value for key, value in vars(instance).items() if not key.startswith("_")}


def _describe(arguments: tuple[Any, ...]) -> str:
    version, caches, serializer, doorkeeper = arguments
    return (
        f"version={version!r}, caches={list(caches)!r}, serializer={serializer!r}, doorkeeper={doorkeeper!r}"
    )


def nodes() -> list[type[Node]]:
    """Every node class defined so far (``DynamicNode`` itself excluded)."""
    with _node_classes_lock:
        alive = [cls for ref in _node_classes if (cls := ref()) is not None]
        _node_classes[:] = [weakref.ref(cls) for cls in alive]
    alive = [cls for cls in alive if cls is not DynamicNode]
    return alive
