"""local://lru and local://tlfu: eviction, exact ttl, objects kept as they are."""

from __future__ import annotations

import asyncio
import threading
import time
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


@pytest.mark.parametrize("url", ["local://lru", "local://tlfu"])
async def test_threads_share_a_local_storage_safely(url: str) -> None:
    storage = await connected(url, 10_000)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(5000):
                storage.set_sync(f"t{offset}:{i}", i, None)
                value = storage.get_sync(f"t{offset}:{i}")
                assert value == i or value is cacheme.MISSING
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
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
