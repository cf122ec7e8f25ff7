"""The storage contract every backend implements.

A remote storage keeps ``bytes`` (the node's serializer turns values into bytes
before they get here). A local storage keeps Python objects as they are and
also offers synchronous access, which the engine uses on its hot path.

A backend raises whatever its driver raises when something goes wrong: the
engine turns a failed read into a miss and a failed write into a skipped
write, logs both and counts them in the node's stats. A backend must never
block forever: every network call has a bounded timeout.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Final

from cacheme.errors import StorageConfigError
from cacheme.health import Breaker, Health

__all__ = [
    "LATEST_EXPIRY",
    "MISSING",
    "BaseStorage",
    "LocalStorage",
    "capped_ttl",
    "ttl_milliseconds",
    "ttl_seconds",
]


class _Missing:
    """Type of the `MISSING` sentinel: what a local storage returns for an absent key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class BaseStorage(abc.ABC):
    """A place values are cached in. Subclass it to write a backend.

    Constructed as ``cls(url, **options)`` by ``cacheme.Storage``; the
    constructor validates the URL and options and must not do I/O.
    ``connect`` opens connections (and may create tables); ``close`` releases
    them. ``ttl`` is ``None`` (never expires) or a positive ``timedelta``.
    """

    is_local: ClassVar[bool] = False
    # Whether an operation cancelled midway ends at once, with no I/O of its own (it awaits a
    # batch's future, or a driver that drops the connection). Then a deadline runs the operation
    # in the caller's task and cancels it there; otherwise the operation runs in a task of its own
    # that a deadline abandons, not waits for (see cacheme.health.within).
    cancels_at_once: ClassVar[bool] = False

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        # Keys whose operation on this storage failed, by operation ("read", "write", "delete",
        # "lease"), counted by the engine (``cacheme.snapshot()`` reads them).
        self.error_counts: dict[str, int] = {}
        self.use_health(Health())

    def use_health(self, health: Health) -> None:
        """Bound this storage's operations and break its circuit as ``health`` says (see cacheme.health).

        ``cacheme.Storage(url, health=...)`` calls it; a new breaker starts closed.
        """
        if not isinstance(health, Health):
            raise StorageConfigError(f"health must be a cacheme.Health, got {health!r}")
        self.health = health
        self.breaker = Breaker(health, self.__repr__)

    @abc.abstractmethod
    async def connect(self) -> None: ...

    def drop_connections(self) -> None:
        """Drop the running loop's connections; the next operation opens new ones (no await, no error).

        The engine calls it when the storage's circuit breaker opens: connections
        a dead or partitioned server left behind (a reply that will never come)
        would otherwise fail the probes after the server is back. The default
        does nothing.
        """
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def get(self, key: str) -> Any:
        """The value stored under ``key``, or ``None`` when absent or expired."""

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The keys found, mapped to their values: absent keys are left out."""

    @abc.abstractmethod
    async def set(self, key: str, value: Any, ttl: timedelta | None) -> None: ...

    @abc.abstractmethod
    async def set_many(self, items: Mapping[str, Any], ttl: timedelta | None) -> None: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def delete_many(self, keys: Sequence[str]) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class LocalStorage(BaseStorage):
    """An in-process storage: keeps objects, answers synchronously.

    ``get_sync`` returns ``MISSING`` for an absent or expired key, so that
    ``None`` can be cached like any other value. The async methods are
    provided on top of the sync ones. The engine keeps ``cacheme.entry.Entry``
    objects in it (the value and its age); a storage keeps whatever it is
    given, as it is, for the ttl it is given.
    """

    is_local: ClassVar[bool] = True
    # The registered storage whose bus carries this storage's invalidations (``Storage(..., bus=)``),
    # and the bus once bound (``cacheme.bus.BusHub``, set by register_storage).
    bus_name: str | None = None
    bus_hub: Any = None

    def entry_count(self) -> int | None:
        """How many entries the storage holds now (None when it cannot tell): its ``len()``."""
        length = getattr(self, "__len__", None)
        return None if length is None else int(length())

    @abc.abstractmethod
    def get_sync(self, key: str) -> Any: ...

    @abc.abstractmethod
    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None: ...

    @abc.abstractmethod
    def delete_sync(self, key: str) -> None: ...

    def clear_sync(self) -> None:
        """Drop every entry. Needed to listen on an invalidation bus (emptied when it loses its
        connection); a storage without it cannot."""
        raise NotImplementedError(f"{type(self).__name__} cannot be emptied (no clear_sync)")

    async def connect(self) -> None:
        return None

    async def get(self, key: str) -> Any:
        value = self.get_sync(key)
        return None if value is MISSING else value

    def get_many_sync(self, keys: Sequence[str]) -> dict[str, Any]:
        """``{key: value}`` of the keys held, at once (no await)."""
        found: dict[str, Any] = {}
        for key in keys:
            value = self.get_sync(key)
            if value is not MISSING:
                found[key] = value
        return found

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        return self.get_many_sync(keys)

    async def set(self, key: str, value: Any, ttl: timedelta | None) -> None:
        self.set_sync(key, value, ttl)

    async def set_many(self, items: Mapping[str, Any], ttl: timedelta | None) -> None:
        for key, value in items.items():
            self.set_sync(key, value, ttl)

    async def delete(self, key: str) -> None:
        self.delete_sync(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete_sync(key)


def ttl_milliseconds(ttl: timedelta) -> int:
    """A positive ttl in whole milliseconds, rounded up so it never becomes 0."""
    microseconds = (ttl.days * 86_400 + ttl.seconds) * 1_000_000 + ttl.microseconds
    return max(1, -(-microseconds // 1000))


def ttl_seconds(ttl: timedelta) -> float:
    """A ttl in seconds as a float (sub-second precision kept)."""
    return ttl.total_seconds()


def capped_ttl(ttl: timedelta | None, maximum: timedelta) -> timedelta | None:
    """``ttl``, or ``maximum`` when ``ttl`` is longer: the longest a backend can hold.

    Users write ``timedelta.max`` (or any very long ttl) to mean "for ever";
    a backend whose clock or column cannot reach that far keeps the entry for
    ``maximum`` instead of failing the write. ``None`` (never expires) stays ``None``.
    """
    if ttl is not None and ttl > maximum:
        return maximum
    return ttl


# The latest moment a Python datetime holds (9999-12-31 23:59:59.999999 UTC). A
# backend that keeps an entry's expiry as a datetime keeps one that would expire
# later (``timedelta.max`` from now, say) until this moment instead.
LATEST_EXPIRY: Final = datetime.max.replace(tzinfo=timezone.utc)
