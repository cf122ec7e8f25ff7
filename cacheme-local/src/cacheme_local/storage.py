"""The two local policies and the URL that picks one."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Final, cast

from theine_core import TlfuCore

from cacheme.errors import StorageConfigError
from cacheme.storage import MISSING, LocalStorage, capped_ttl

__all__ = ["MAX_TTL", "TLFUStorage", "LRUStorage", "local_storage"]

# The longest ttl a local storage keeps: theine's policy takes a ttl as a signed
# 64-bit count of nanoseconds, 2**63 - 1 ns (about 292 years). A longer ttl,
# ``timedelta.max`` included, is kept as MAX_TTL (both policies, alike).
MAX_TTL: Final = timedelta(microseconds=(2**63 - 1) // 1000)


_READ_BATCH: Final = 64  # TLFUStorage.READ_BATCH, read as a global on the hot path


def _checked_size(url: str, size: object) -> int:
    if size is None:
        raise StorageConfigError(f"{url}: the option size (how many entries to keep) is required")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise StorageConfigError(f"{url}: size must be a positive int, got {size!r}")
    return size


class _Expiring:
    """A value written with a ttl, as a storage keeps it: the value and its expiry (monotonic ns).

    A value written without a ttl is kept as it is; this wrapper, 48 bytes, and
    the expiry's int, 32, are what a ttl costs per entry.
    """

    __slots__ = ("expires", "value")

    def __init__(self, value: Any, expires: int) -> None:
        self.value = value
        self.expires = expires


def _expiry(ttl_ns: int) -> int:
    """When an entry written now for ``ttl_ns`` expires, in monotonic ns.

    ``| 0`` gives the int a block of its own size: a sum of two-digit ints is
    allocated one digit longer (48 bytes instead of 32, kept with every entry).
    """
    return (time.monotonic_ns() + ttl_ns) | 0


class _HashOf:
    """Equal to any key whose hash is ``key_hash``: finds a dict's key from its hash alone.

    A dict looked up with this probe finds a key stored with that hash, asks the
    probe whether they are equal, and it says yes. One probe per storage,
    changed and used under its lock.
    """

    __slots__ = ("key_hash",)

    def __init__(self) -> None:
        self.key_hash = 0

    def __hash__(self) -> int:
        return self.key_hash

    def __eq__(self, other: object) -> bool:
        return hash(other) == self.key_hash


class TLFUStorage(LocalStorage):
    """W-TinyLFU eviction: theine 2's Rust policy (``theine_core.TlfuCore``) behind a plain dict.

    theine's own ``Cache`` wraps the same policy in shards, locks and buffers
    that cost ~0.9 us per read; here a read is one dict lookup plus the key
    appended to a buffer, and the policy learns of reads in batches of
    ``READ_BATCH``. Writes go to the policy at once, so ``size`` holds exactly.

    The dict keeps a value written without a ttl as it is, and one written with
    a ttl with its expiry (``_Expiring``), checked on every read to the
    nanosecond. The policy's timer wheel also reports expired keys, which are
    dropped. A ttl longer than ``MAX_TTL`` (about 292 years) is kept as ``MAX_TTL``.

    The policy knows a key by an unsigned 64-bit int, its *policy key*:
    ``abs(hash(key))``. Nothing per entry keeps it: a str keeps its hash, and the
    policy key is computed again when the policy needs it (at a batch of reads,
    a write, a delete). The policy names the keys it evicts by their policy key
    ``p``; the key is found in the dict by its hash, ``p`` or ``-p``
    (``_HashOf``). Two keys of one policy key (hashes equal or opposite) are
    never kept together: the later written wins.
    """

    READ_BATCH: Final = _READ_BATCH
    ADVANCE_INTERVAL_NS = 1_000_000_000

    def __init__(self, url: str, size: int | None = None) -> None:
        super().__init__(url)
        self.size = _checked_size(url, size)
        self._lock = threading.Lock()
        self._probe = _HashOf()
        self._probe_key = cast(str, self._probe)  # the same probe, as a key of the dict
        self._reset()

    def _reset(self) -> None:
        self._core = TlfuCore(self.size)
        self._entries: dict[str, Any] = {}  # key -> value, or _Expiring(value, expiry)
        self._reads: list[str] = []  # the keys read since the policy last heard of reads
        self._advanced_at = time.monotonic_ns()

    async def close(self) -> None:
        with self._lock:
            self._reset()

    def get_sync(self, key: str) -> Any:
        value = self._entries.get(key, MISSING)
        if value is MISSING:
            return MISSING
        if type(value) is _Expiring:
            if value.expires <= time.monotonic_ns():
                self._drop(key, value)
                return MISSING
            value = value.value
        reads = self._reads
        reads.append(key)
        if len(reads) >= _READ_BATCH:
            self._drain_reads()
        return value

    def _drain_reads(self) -> None:
        lock = self._lock
        lock.acquire()  # not ``with``: Python 3.11 takes ~70 ns longer for it
        try:
            reads, self._reads = self._reads, []
            self._core.access(list(map(abs, map(hash, reads))))
            now = time.monotonic_ns()
            if now - self._advanced_at >= self.ADVANCE_INTERVAL_NS:
                self._advanced_at = now
                self._forget(self._core.advance())
        finally:
            lock.release()

    def _forget(self, policy_keys: list[int]) -> None:
        """Drop the entries the policy evicted or expired (lock held)."""
        if policy_keys:
            probe, probe_key, entries = self._probe, self._probe_key, self._entries
            for policy_key in policy_keys:
                probe.key_hash = policy_key
                if entries.pop(probe_key, MISSING) is MISSING and policy_key:
                    probe.key_hash = -policy_key
                    entries.pop(probe_key, None)

    def _drop(self, key: str, entry: _Expiring) -> None:
        """Drop ``key``'s expired ``entry``, unless it was written again since (it then is another)."""
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
                self._core.remove(abs(hash(key)))

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        key_hash = hash(key)
        ttl = capped_ttl(ttl, MAX_TTL)
        ttl_ns = 0 if ttl is None else _ttl_nanoseconds(ttl)
        if ttl_ns:
            value = _Expiring(value, _expiry(ttl_ns))
        lock = self._lock
        lock.acquire()
        try:
            entries = self._entries
            if key not in entries:
                # Another key of this policy key (its hash, or its hash's opposite) goes: the
                # policy tracks one key per policy key, this one from now on.
                probe, probe_key = self._probe, self._probe_key
                probe.key_hash = key_hash
                entries.pop(probe_key, None)
                probe.key_hash = -key_hash
                entries.pop(probe_key, None)
            entries[key] = value
            self._forget(self._core.set([(abs(key_hash), ttl_ns)]))
        finally:
            lock.release()

    def delete_sync(self, key: str) -> None:
        with self._lock:
            if self._entries.pop(key, MISSING) is not MISSING:
                self._core.remove(abs(hash(key)))

    def clear_sync(self) -> None:
        with self._lock:
            self._reset()

    def __len__(self) -> int:
        return len(self._entries)


class LRUStorage(LocalStorage):
    """Exact least-recently-used eviction; entries expire to the nanosecond on read.

    An ``OrderedDict`` in the order of use keeps a value written without a ttl
    as it is, and one written with a ttl with its expiry (``_Expiring``). A ttl
    longer than ``MAX_TTL`` (about 292 years) is kept as ``MAX_TTL``, as in TLFU.
    """

    def __init__(self, url: str, size: int | None = None) -> None:
        super().__init__(url)
        self.size = _checked_size(url, size)
        self._entries: OrderedDict[str, Any] = OrderedDict()  # key -> value, or _Expiring
        self._lock = threading.Lock()

    async def close(self) -> None:
        with self._lock:
            self._entries.clear()

    def get_sync(self, key: str) -> Any:
        lock = self._lock
        lock.acquire()  # not ``with``: Python 3.11 takes ~70 ns longer for it
        try:
            entries = self._entries
            value = entries.get(key, MISSING)
            if value is MISSING:
                return MISSING
            if type(value) is _Expiring:
                if value.expires <= time.monotonic_ns():
                    del entries[key]
                    return MISSING
                value = value.value
            entries.move_to_end(key)
            return value
        finally:
            lock.release()

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        ttl = capped_ttl(ttl, MAX_TTL)
        if ttl is not None:
            value = _Expiring(value, _expiry(_ttl_nanoseconds(ttl)))
        lock = self._lock
        lock.acquire()
        try:
            entries = self._entries
            entries[key] = value
            entries.move_to_end(key)
            while len(entries) > self.size:
                entries.popitem(last=False)
        finally:
            lock.release()

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
