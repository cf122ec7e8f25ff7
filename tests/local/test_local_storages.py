"""local://lru and local://tlfu: eviction, exact ttl, objects kept as they are."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

import cacheme
from cacheme_local.storage import MAX_TTL, LRUStorage, TLFUStorage


async def connected(url: str, size: int) -> cacheme.LocalStorage:
    storage = cacheme.Storage(url, size=size)
    assert isinstance(storage, cacheme.LocalStorage)
    await storage.connect()
    return storage


async def test_lru_evicts_the_least_recently_used_exactly() -> None:
    storage = await connected("local://lru", 3)
    assert isinstance(storage, LRUStorage)
    for key in "abc":
        storage.set_sync(key, key.upper(), None)
    assert storage.get_sync("a") == "A"  # a is now the most recent
    storage.set_sync("d", "D", None)  # evicts b, the least recent
    assert storage.get_sync("b") is cacheme.MISSING
    assert [storage.get_sync(k) for k in "acd"] == ["A", "C", "D"]
    assert len(storage) == 3
    await storage.close()


async def test_tlfu_keeps_at_most_size_entries() -> None:
    storage = await connected("local://tlfu", 100)
    assert isinstance(storage, TLFUStorage)
    for i in range(5000):
        storage.set_sync(f"k{i}", i, None)
    assert len(storage) == 100
    kept = sum(storage.get_sync(f"k{i}") is not cacheme.MISSING for i in range(5000))
    assert kept == 100
    await storage.close()


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_ttl_is_exact_to_the_millisecond_on_read(url: str) -> None:
    storage = await connected(url, 100)
    storage.set_sync("short", "v", timedelta(milliseconds=50))
    storage.set_sync("forever", "f", None)
    assert storage.get_sync("short") == "v"
    await asyncio.sleep(0.04)
    assert storage.get_sync("short") == "v"
    await asyncio.sleep(0.02)
    assert storage.get_sync("short") is cacheme.MISSING
    assert storage.get_sync("forever") == "f"
    await storage.close()


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_objects_are_kept_as_they_are(url: str) -> None:
    storage = await connected(url, 10)
    value = {"nested": [1, 2]}
    storage.set_sync("obj", value, None)
    assert storage.get_sync("obj") is value
    storage.set_sync("none", None, None)
    assert storage.get_sync("none") is None  # None is a value, MISSING is absence
    storage.delete_sync("obj")
    assert storage.get_sync("obj") is cacheme.MISSING
    await storage.close()


def in_threads(work: Callable[[int], None], count: int) -> list[BaseException]:
    """Run ``work(0)`` ... ``work(count - 1)`` in threads of their own at once; what they raised."""
    errors: list[BaseException] = []

    def guarded(offset: int) -> None:
        try:
            work(offset)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_threads_share_a_local_storage_safely(url: str) -> None:
    storage = await connected(url, 10_000)

    def work(offset: int) -> None:
        for i in range(5000):
            storage.set_sync(f"t{offset}:{i}", i, None)
            value = storage.get_sync(f"t{offset}:{i}")
            assert value == i or value is cacheme.MISSING

    assert in_threads(work, 4) == []
    await storage.close()


async def test_tlfu_close_empties_it() -> None:
    storage = await connected("local://tlfu", 10)
    storage.set_sync("k", 1, None)
    await storage.close()
    assert storage.get_sync("k") is cacheme.MISSING
    assert len(storage) == 0  # type: ignore[arg-type]


async def test_tlfu_prefers_frequent_keys_over_a_scan() -> None:
    storage = await connected("local://tlfu", 100)
    hot = [f"hot{i}" for i in range(50)]
    for key in hot:
        storage.set_sync(key, key, None)
    for _ in range(20):
        for key in hot:
            assert storage.get_sync(key) == key
    for i in range(2000):  # a one-off scan must not flush the hot keys out
        storage.set_sync(f"scan{i}", i, None)
    kept_hot = sum(storage.get_sync(key) == key for key in hot)
    assert kept_hot >= 45
    assert len(storage) <= 100  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
@pytest.mark.parametrize("ttl", [timedelta.max, timedelta(days=106752)], ids=["timedelta.max", "106752-days"])
async def test_a_ttl_longer_than_max_ttl_is_kept_as_max_ttl(
    url: str, ttl: timedelta, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await connected(url, 10)
    storage.set_sync("endless", "e", ttl)
    written = time.monotonic_ns()
    assert storage.get_sync("endless") == "e"
    max_ttl_ns = MAX_TTL // timedelta(microseconds=1) * 1000
    # The storage's clock moved on: a second short of MAX_TTL, then just past it.
    monkeypatch.setattr(time, "monotonic_ns", lambda: written + max_ttl_ns - 1_000_000_000)
    assert storage.get_sync("endless") == "e"
    monkeypatch.setattr(time, "monotonic_ns", lambda: written + max_ttl_ns + 1)
    assert storage.get_sync("endless") is cacheme.MISSING
    await storage.close()


async def test_tlfu_reads_and_evicts_entries_with_endless_ttls() -> None:
    storage = await connected("local://tlfu", 50)
    assert isinstance(storage, TLFUStorage)
    storage.ADVANCE_INTERVAL_NS = 0  # the policy's timer wheel advances at every batch of reads
    for i in range(200):
        storage.set_sync(f"k{i}", i, timedelta.max)
    assert len(storage) == 50
    for _ in range(10):
        found = [storage.get_sync(f"k{i}") for i in range(200)]
        assert sum(value is not cacheme.MISSING for value in found) == 50
    await storage.close()


# ---------------------------------------------------------------- how entries are kept (memory per entry)


class Colliding(str):
    """A str key whose hash is chosen, to make two keys of one hash (str keys hardly ever are)."""

    key_hash: int

    def __new__(cls, text: str, key_hash: int) -> Colliding:
        key = super().__new__(cls, text)
        key.key_hash = key_hash
        return key

    def __hash__(self) -> int:
        return self.key_hash


def tracked(storage: TLFUStorage) -> int:
    """How many keys the policy tracks: always as many as the storage holds."""
    count: int = storage._core.len()
    return count


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_ttl_is_exact_to_the_nanosecond(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = await connected(url, 10)
    now = time.monotonic_ns()
    monkeypatch.setattr(time, "monotonic_ns", lambda: now)
    storage.set_sync("k", "v", timedelta(seconds=2, microseconds=3))
    expiry = now + 2_000_003_000
    monkeypatch.setattr(time, "monotonic_ns", lambda: expiry - 1)
    assert storage.get_sync("k") == "v"
    monkeypatch.setattr(time, "monotonic_ns", lambda: expiry)
    assert storage.get_sync("k") is cacheme.MISSING
    assert len(storage) == 0  # type: ignore[arg-type]
    if isinstance(storage, TLFUStorage):
        assert tracked(storage) == 0  # dropped from the policy too
    await storage.close()


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_a_key_written_again_keeps_the_ttl_of_its_last_write(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await connected(url, 10)
    storage.set_sync("k", "with a ttl", timedelta(seconds=1))
    storage.set_sync("k", "without", None)
    later = time.monotonic_ns() + 1000 * 10**9
    monkeypatch.setattr(time, "monotonic_ns", lambda: later)
    assert storage.get_sync("k") == "without"  # the first write's ttl is gone with it
    monkeypatch.undo()
    storage.set_sync("k", "with a ttl again", timedelta(seconds=1))
    assert storage.get_sync("k") == "with a ttl again"
    later = time.monotonic_ns() + 2 * 10**9
    monkeypatch.setattr(time, "monotonic_ns", lambda: later)
    assert storage.get_sync("k") is cacheme.MISSING
    assert len(storage) == 0  # type: ignore[arg-type]
    monkeypatch.undo()
    storage.set_sync("k", "short", timedelta(microseconds=1))
    storage.set_sync("k", "long", timedelta(hours=1))
    later = time.monotonic_ns() + 10**9
    monkeypatch.setattr(time, "monotonic_ns", lambda: later)
    assert storage.get_sync("k") == "long"
    assert storage.entry_count() == 1
    await storage.close()


@pytest.mark.parametrize("other_hash", [12345, -12345], ids=["equal-hashes", "opposite-hashes"])
async def test_tlfu_keeps_one_of_two_keys_of_one_policy_key(other_hash: int) -> None:
    storage = await connected("local://tlfu", 10)
    assert isinstance(storage, TLFUStorage)
    first, second = Colliding("first", 12345), Colliding("second", other_hash)
    storage.set_sync(first, 1, None)
    storage.set_sync("bystander", 0, None)
    storage.set_sync(second, 2, timedelta(hours=1))  # the policy tracks `second` from now on
    assert storage.get_sync(first) is cacheme.MISSING
    assert storage.get_sync(second) == 2
    assert len(storage) == tracked(storage) == 2
    storage.set_sync(first, 3, None)  # and `first` again
    assert storage.get_sync(second) is cacheme.MISSING
    assert storage.get_sync(first) == 3
    assert len(storage) == tracked(storage) == 2
    storage.delete_sync(first)
    assert len(storage) == tracked(storage) == 1
    assert storage.get_sync("bystander") == 0
    await storage.close()


async def test_tlfu_finds_each_key_the_policy_names_by_its_hash() -> None:
    storage = await connected("local://tlfu", 10)
    assert isinstance(storage, TLFUStorage)
    # Hashes at the edges: the least 64-bit one (whose opposite is out of range), 0 (its own
    # opposite), 1 (whose opposite, -1, Python turns into -2 when a __hash__ returns it) and -2.
    keys = [Colliding(name, key_hash) for name, key_hash in (("least", -(2**63)), ("zero", 0), ("one", 1))]
    keys.append(Colliding("minus-two", -2))
    for key in keys:
        storage.set_sync(key, str(key), timedelta(hours=1))
    assert len(storage) == tracked(storage) == 4
    with storage._lock:
        storage._forget([1])  # as if the policy had evicted "one"
    assert storage.get_sync(keys[2]) is cacheme.MISSING
    with storage._lock:
        storage._forget([1])  # again: nothing of that policy key is left, "minus-two" stays
    assert [storage.get_sync(key) for key in keys] == ["least", "zero", cacheme.MISSING, "minus-two"]
    with storage._lock:
        storage._forget([2**63, 0, 2])
    assert len(storage) == 0
    await storage.close()


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_nothing_outgrows_the_size_through_many_writes_reads_and_evictions(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = await connected(url, 50)
    clock = time.monotonic_ns()
    monkeypatch.setattr(time, "monotonic_ns", lambda: clock)
    ttls = [None, timedelta(hours=1), timedelta(microseconds=1), timedelta.max]
    for i in range(20_000):
        storage.set_sync(f"k{i}", i, ttls[i % len(ttls)])
        storage.set_sync(Colliding(f"c{i}", i % 7 - 3), i, ttls[i % 3])  # 7 policy keys, 4 of them shared
        clock += 1000  # one microsecond: the 1 us ttls expire
        for back in (1, 2, 5):
            storage.get_sync(f"k{i - back}")
        if i % 11 == 0:
            storage.delete_sync(f"k{i - 3}")
        if i % 997 == 0:
            assert len(storage) <= 50  # type: ignore[arg-type]
    assert len(storage) <= 50  # type: ignore[arg-type]
    if isinstance(storage, TLFUStorage):
        assert len(storage._entries) == tracked(storage)
        assert len(storage._reads) < storage.READ_BATCH
        assert sum(isinstance(key, Colliding) for key in storage._entries) <= 4
    else:
        assert isinstance(storage, LRUStorage)
        assert len(storage._entries) <= 50
    await storage.close()


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_threads_writing_with_ttls_into_a_full_storage(url: str) -> None:
    storage = await connected(url, 100)

    def work(offset: int) -> None:
        for i in range(3000):
            ttl = None if i % 2 else timedelta(microseconds=i % 5 * 100 + 1)
            storage.set_sync(f"t{offset}:{i % 300}", i, ttl)
            for key in (f"t{offset}:{i % 300}", f"t{(offset + 1) % 4}:{i % 300}"):
                value = storage.get_sync(key)
                assert value is cacheme.MISSING or isinstance(value, int)
            if i % 7 == 0:
                storage.delete_sync(f"t{offset}:{(i + 1) % 300}")

    assert in_threads(work, 4) == []
    assert len(storage) <= 100  # type: ignore[arg-type]
    if isinstance(storage, TLFUStorage):
        assert len(storage._entries) == tracked(storage)
    await storage.close()


async def test_lru_order_and_eviction_with_ttls() -> None:
    storage = await connected("local://lru", 3)
    for key, ttl in zip("abc", [timedelta(hours=1), None, timedelta(hours=1)], strict=True):
        storage.set_sync(key, key.upper(), ttl)
    assert storage.get_sync("a") == "A"  # the most recent now
    storage.set_sync("d", "D", timedelta(hours=1))  # evicts b
    assert [storage.get_sync(k) for k in "abcd"] == ["A", cacheme.MISSING, "C", "D"]
    storage.set_sync("e", "E", None)  # evicts a, the least recent after the reads above
    assert [storage.get_sync(k) for k in "acde"] == [cacheme.MISSING, "C", "D", "E"]
    await storage.close()


async def test_tlfu_clear_empties_the_policy_too() -> None:
    storage = await connected("local://tlfu", 10)
    assert isinstance(storage, TLFUStorage)
    for i in range(20):
        storage.set_sync(f"k{i}", i, timedelta(hours=1) if i % 2 else None)
    storage.clear_sync()
    assert len(storage) == tracked(storage) == 0
    storage.set_sync("k", 1, timedelta(hours=1))
    assert storage.get_sync("k") == 1
    assert len(storage) == tracked(storage) == 1
    await storage.close()
