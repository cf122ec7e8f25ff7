"""local://lru and local://tlfu: eviction, exact ttl, objects kept as they are."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

import cacheme
from cacheme_local.storage import LRUStorage, TLFUStorage


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
