"""One storage contract, checked against every backend (see cases.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio

from cacheme.storage import BaseStorage
from tests.conformance.cases import StorageCase, all_cases

CASES = all_cases()


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def case(request: pytest.FixtureRequest) -> StorageCase:
    return request.param  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def storage(case: StorageCase, request: pytest.FixtureRequest) -> AsyncIterator[BaseStorage]:
    built = await case.make(request)
    try:
        yield built
    finally:
        await built.close()


ALL_BYTES = bytes(range(256)) * 4


async def test_missing_key_reads_as_absent(storage: BaseStorage) -> None:
    assert await storage.get("absent") is None
    assert await storage.get_many(["absent-1", "absent-2"]) == {}


async def test_set_then_get_returns_the_same_bytes(storage: BaseStorage) -> None:
    await storage.set("k", ALL_BYTES, None)
    assert await storage.get("k") == ALL_BYTES
    await storage.set("empty", b"", None)
    assert await storage.get("empty") == b""


async def test_set_overwrites(storage: BaseStorage) -> None:
    await storage.set("k", b"one", None)
    await storage.set("k", b"two", None)
    assert await storage.get("k") == b"two"
    await storage.set_many({"k": b"three"}, None)
    assert await storage.get("k") == b"three"


async def test_batch_set_and_get_keep_present_and_leave_out_absent(storage: BaseStorage) -> None:
    items = {f"batch:{i}": f"value-{i}".encode() for i in range(500)}
    await storage.set_many(items, None)
    keys = [*items, "batch:absent", "batch:also-absent"]
    found = await storage.get_many(keys)
    assert found == items
    assert await storage.get("batch:250") == b"value-250"


async def test_empty_batches_are_no_ops(storage: BaseStorage) -> None:
    assert await storage.get_many([]) == {}
    await storage.set_many({}, None)
    await storage.delete_many([])


async def test_get_many_with_repeated_keys(storage: BaseStorage) -> None:
    await storage.set("dup", b"d", None)
    assert await storage.get_many(["dup", "dup", "none", "dup"]) == {"dup": b"d"}


async def test_delete_and_delete_many(storage: BaseStorage) -> None:
    await storage.set_many({"a": b"1", "b": b"2", "c": b"3"}, None)
    await storage.delete("a")
    await storage.delete("never-there")
    assert await storage.get("a") is None
    await storage.delete_many(["b", "c", "never-there"])
    assert await storage.get_many(["a", "b", "c"]) == {}


async def test_sub_second_ttl_is_kept_and_then_expires(storage: BaseStorage, case: StorageCase) -> None:
    await storage.set("short", b"v", timedelta(milliseconds=700))
    await storage.set_many({"short-a": b"a", "short-b": b"b"}, timedelta(milliseconds=700))
    await storage.set("forever", b"f", None)
    await asyncio.sleep(0.2)
    assert await storage.get("short") == b"v"
    assert await storage.get_many(["short-a", "short-b"]) == {"short-a": b"a", "short-b": b"b"}
    await asyncio.sleep(0.9 + case.expiry_slack_seconds)
    assert await storage.get("short") is None
    assert await storage.get_many(["short-a", "short-b", "forever"]) == {"forever": b"f"}


async def test_long_ttl_keeps_value(storage: BaseStorage) -> None:
    await storage.set("day", b"d", timedelta(days=1))
    await storage.set_many({"week": b"w"}, timedelta(days=7))
    assert await storage.get_many(["day", "week"]) == {"day": b"d", "week": b"w"}


async def test_eight_mebibyte_value(storage: BaseStorage) -> None:
    value = os.urandom(8 * 1024 * 1024)
    await storage.set("big", value, None)
    assert await storage.get("big") == value
    await storage.set_many({"big2": value}, None)
    assert (await storage.get_many(["big2"]))["big2"] == value


async def test_unicode_and_long_keys(storage: BaseStorage) -> None:
    keys = [
        "ключ:значение",
        "キー:値:🔑",
        "spaces and\ttabs",
        "x" * 3000,
        "é" * 3000,
        "a:b:c",
    ]
    await storage.set_many({key: key.encode() for key in keys}, None)
    for key in keys:
        assert await storage.get(key) == key.encode()
    assert await storage.get_many(keys) == {key: key.encode() for key in keys}
    # Long keys that share a long prefix stay distinct.
    await storage.set("x" * 2999 + "y", b"other", None)
    assert await storage.get("x" * 3000) == ("x" * 3000).encode()
    await storage.delete_many(keys)
    assert await storage.get_many(keys) == {}


async def test_concurrent_operations(storage: BaseStorage) -> None:
    async def one(i: int) -> bytes | None:
        await storage.set(f"c:{i}", str(i).encode(), None)
        value: bytes | None = await storage.get(f"c:{i}")
        return value

    results = await asyncio.gather(*(one(i) for i in range(300)))
    assert results == [str(i).encode() for i in range(300)]


# ttls users write to mean "for ever": timedelta.max, and the first whole number
# of days past 2**63 nanoseconds (what a signed 64-bit count of nanoseconds holds).
ENDLESS_TTLS = [timedelta.max, timedelta(days=106752)]


@pytest.mark.parametrize("ttl", ENDLESS_TTLS, ids=["timedelta.max", "106752-days"])
async def test_ttl_beyond_the_backend_range_keeps_the_value(storage: BaseStorage, ttl: timedelta) -> None:
    await storage.set("endless", b"e", ttl)
    await storage.set_many({"endless-a": b"a", "endless-b": b"b"}, ttl)
    assert await storage.get("endless") == b"e"
    assert await storage.get_many(["endless-a", "endless-b"]) == {"endless-a": b"a", "endless-b": b"b"}
    # Overwriting a key with the same ttl keeps the new value too.
    await storage.set("endless", b"again", ttl)
    await storage.set_many({"endless-a": b"a2"}, ttl)
    assert await storage.get_many(["endless", "endless-a"]) == {"endless": b"again", "endless-a": b"a2"}
