"""The two local policies and the URL that picks one."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Final

from theine_core import TlfuCore, spread

from cacheme.errors import StorageConfigError
from cacheme.storage import MISSING, LocalStorage, capped_ttl

__all__ = ["MAX_TTL", "TLFUStorage", "LRUStorage", "local_storage"]

# The longest ttl a local storage keeps: theine's policy takes a ttl as a signed
# 64-bit count of nanoseconds, 2**63 - 1 ns (about 292 years). A longer ttl,
# ``timedelta.max`` included, is kept as MAX_TTL (both policies, alike).
MAX_TTL: Final = timedelta(microseconds=(2**63 - 1) // 1000)


def _checked_size(url: str, size: object) -> int:
    if size is None:
        raise StorageConfigError(f"{url}: the option size (how many entries to keep) is required")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise StorageConfigError(f"{url}: size must be a positive int, got {size!r}")
    return size


class TLFUStorage(LocalStorage):
    """W-TinyLFU eviction: theine 2's Rust policy (``theine_core.TlfuCore``) behind a plain dict.

    theine's own ``Cache`` wraps the same policy in shards, locks and buffers
    that cost ~0.9 us per read; here a read is one dict lookup plus a hash
    appended to a buffer, and the policy learns of reads in batches of
    ``READ_BATCH``. Writes go to the policy at once, so ``size`` holds exactly.
    Each entry keeps its expiry, checked on every read to the nanosecond; the
    policy's timer wheel also reports expired keys, which are dropped. A ttl
    longer than ``MAX_TTL`` (about 292 years) is kept as ``MAX_TTL``.
    """

    READ_BATCH = 64
    ADVANCE_INTERVAL_NS = 1_000_000_000

    def __init__(self, url: str, size: int | None = None) -> None:
        super().__init__(url)
        self.size = _checked_size(url, size)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._core = TlfuCore(self.size)
        # key -> (value, expiry in monotonic ns or 0, key hash); hash -> key for evictions.
        self._entries: dict[str, tuple[Any, int, int]] = {}
        self._keys: dict[int, str] = {}
        self._reads: list[int] = []
        self._advanced_at = time.monotonic_ns()

    async def close(self) -> None:
        with self._lock:
            self._reset()

    def get_sync(self, key: str) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return MISSING
        value, expires, key_hash = entry
        if expires and expires <= time.monotonic_ns():
            self._drop(key, entry)
            return MISSING
        reads = self._reads
        reads.append(key_hash)
        if len(reads) >= self.READ_BATCH:
            self._drain_reads()
        return value

    def _drain_reads(self) -> None:
        with self._lock:
            reads, self._reads = self._reads, []
            self._core.access(reads)
            now = time.monotonic_ns()
            if now - self._advanced_at >= self.ADVANCE_INTERVAL_NS:
                self._advanced_at = now
                self._forget(self._core.advance())

    def _forget(self, key_hashes: list[int]) -> None:
        """Drop the entries the policy evicted or expired (lock held)."""
        for key_hash in key_hashes:
            key = self._keys.pop(key_hash, None)
            if key is not None:
                self._entries.pop(key, None)

    def _drop(self, key: str, entry: tuple[Any, int, int]) -> None:
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
                self._untrack(key, entry[2])

    def _untrack(self, key: str, key_hash: int) -> None:
        """Tell the policy a key is gone (lock held)."""
        if self._keys.get(key_hash) == key:
            del self._keys[key_hash]
            self._core.remove(key_hash)

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        key_hash = spread(hash(key))
        ttl = capped_ttl(ttl, MAX_TTL)
        ttl_ns = 0 if ttl is None else _ttl_nanoseconds(ttl)
        expires = time.monotonic_ns() + ttl_ns if ttl_ns else 0
        with self._lock:
            other = self._keys.get(key_hash)
            if other is not None and other != key:
                # Two keys with one 64-bit hash: the policy tracks one of them.
                self._entries.pop(other, None)
            self._keys[key_hash] = key
            self._entries[key] = (value, expires, key_hash)
            self._forget(self._core.set([(key_hash, ttl_ns)]))

    def delete_sync(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._untrack(key, entry[2])

    def clear_sync(self) -> None:
        with self._lock:
            self._reset()

    def __len__(self) -> int:
        return len(self._entries)


class LRUStorage(LocalStorage):
    """Exact least-recently-used eviction; entries expire to the nanosecond on read.

    A ttl longer than ``MAX_TTL`` (about 292 years) is kept as ``MAX_TTL``, as in TLFU.
    """

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
        ttl = capped_ttl(ttl, MAX_TTL)
        expires = 0 if ttl is None else time.monotonic_ns() + _ttl_nanoseconds(ttl)
        with self._lock:
            self._entries[key] = (value, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def delete_sync(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear_sync(self) -> None:
        with self._lock:
            self._entries.clear()

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
