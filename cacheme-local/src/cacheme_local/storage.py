"""The two local policies and the URL that picks one."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any

from theine import Cache as TheineCache

from cacheme.errors import StorageConfigError
from cacheme.storage import MISSING, LocalStorage

__all__ = ["TLFUStorage", "LRUStorage", "local_storage"]


def _checked_size(url: str, size: object) -> int:
    if size is None:
        raise StorageConfigError(f"{url}: the option size (how many entries to keep) is required")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise StorageConfigError(f"{url}: size must be a positive int, got {size!r}")
    return size


class TLFUStorage(LocalStorage):
    """W-TinyLFU eviction on theine 2's Cache."""

    def __init__(self, url: str, size: int | None = None) -> None:
        super().__init__(url)
        self.size = _checked_size(url, size)
        self._cache: TheineCache[str, Any] | None = None
        self._get = self._not_connected

    def _not_connected(self, key: str) -> tuple[Any, bool]:
        raise RuntimeError(f"{self.url} is not connected: register it with cacheme.register_storage")

    async def connect(self) -> None:
        if self._cache is None:
            self._cache = TheineCache(self.size)
            self._get = self._cache.get

    async def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
            self._get = self._not_connected

    def get_sync(self, key: str) -> Any:
        value, found = self._get(key)
        return value if found else MISSING

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        assert self._cache is not None, f"{self.url} is not connected"
        self._cache.set(key, value, ttl)

    def delete_sync(self, key: str) -> None:
        if self._cache is not None:
            self._cache.delete(key)

    def __len__(self) -> int:
        return 0 if self._cache is None else len(self._cache)


class LRUStorage(LocalStorage):
    """Exact least-recently-used eviction; entries expire to the nanosecond on read."""

    def __init__(self, url: str, size: int | None = None) -> None:
        super().__init__(url)
        self.size = _checked_size(url, size)
        # key -> (value, expiry in monotonic ns, 0 = never)
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    async def close(self) -> None:
        with self._lock:
            self._entries.clear()

    def get_sync(self, key: str) -> Any:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return MISSING
            value, expires = entry
            if expires and expires <= time.monotonic_ns():
                del self._entries[key]
                return MISSING
            self._entries.move_to_end(key)
            return value

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        expires = 0 if ttl is None else time.monotonic_ns() + _ttl_nanoseconds(ttl)
        with self._lock:
            self._entries[key] = (value, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def delete_sync(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def _ttl_nanoseconds(ttl: timedelta) -> int:
    return ((ttl.days * 86_400 + ttl.seconds) * 1_000_000 + ttl.microseconds) * 1000


_POLICIES: dict[str, type[TLFUStorage] | type[LRUStorage]] = {"tlfu": TLFUStorage, "lru": LRUStorage}


def local_storage(url: str, **options: Any) -> LocalStorage:
    """``local://tlfu`` or ``local://lru``, with ``size=``."""
    policy = url.split("://", 1)[1].strip("/").lower()
    storage_class = _POLICIES.get(policy)
    if storage_class is None:
        raise StorageConfigError(f"{url}: unknown local policy {policy!r}; use local://tlfu or local://lru")
    unknown = set(options) - {"size"}
    if unknown:
        raise StorageConfigError(
            f"{url}: unknown option(s) {', '.join(sorted(unknown))}; local storages take size"
        )
    return storage_class(url, **options)
