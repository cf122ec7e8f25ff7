"""The engine's promises on every backend: endless ttls are cached, keys a tier cannot store are refused.

Each test registers the case's storage (see test_contract.py's ``case`` and
``storage`` fixtures) under a name of its own, as the only tier of a node class
made for the test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio

import cacheme
from cacheme.storage import BaseStorage
from tests.conformance import test_contract
from tests.core.test_keys import NamedNode, node_class
from tests.waiting import flights_done

# The suite's fixtures, shared rather than copied: every case of every backend.
case = test_contract.case
storage = test_contract.storage


@pytest_asyncio.fixture
async def tier(storage: BaseStorage) -> AsyncIterator[str]:
    """The case's storage, registered under a unique name for the test."""
    name = f"engine-contract-{uuid.uuid4().hex[:12]}"
    await cacheme.register_storage(name, storage)
    try:
        yield name
    finally:
        await cacheme.unregister_storage(name)


async def assert_cached_after_one_load(
    tier: str, node_cls: type[NamedNode], loaded: list[str], names: list[str]
) -> None:
    """get and get_all of ``names``: each loaded once (``loaded``), then read back from the tier as hits."""
    storage = cacheme.registered_storages()[tier]
    for name in names:
        assert await cacheme.get(node_cls(name=name)) == f"value of {name}"
    assert await flights_done()
    for name in names:
        assert await storage.get(node_cls(name=name).full_key()) is not None
        assert await cacheme.get(node_cls(name=name)) == f"value of {name}"
    assert await cacheme.get_all([node_cls(name=name) for name in names]) == [f"value of {n}" for n in names]
    stats = cacheme.stats(node_cls)
    assert loaded == names
    assert (stats.hit_count(), stats.storage_error_count()) == (2 * len(names), 0)


@pytest.mark.parametrize("ttl", test_contract.ENDLESS_TTLS, ids=["timedelta.max", "106752-days"])
async def test_an_endless_ttl_is_cached(tier: str, ttl: timedelta) -> None:
    node_cls, loaded = node_class(tier, ttl)
    await assert_cached_after_one_load(tier, node_cls, loaded, ["endless-1", "endless-2"])


async def test_non_ascii_keys_are_cached(tier: str) -> None:
    node_cls, loaded = node_class(tier, timedelta(minutes=5))
    await assert_cached_after_one_load(tier, node_cls, loaded, ["ключ", "🔑", "é" * 300, "キー:値"])


@pytest.mark.parametrize(
    "key", ["a\x00b", "a\ud800", "\ud83d\udd11"], ids=["nul", "lone-surrogate", "utf16-pair"]
)
async def test_a_key_no_tier_can_store_is_refused(tier: str, key: str) -> None:
    node_cls, loaded = node_class(tier, timedelta(minutes=5))
    with pytest.raises(cacheme.InvalidKeyError, match="KeyNode's cache key"):
        await cacheme.get(node_cls(name=key))
    with pytest.raises(cacheme.InvalidKeyError):
        await cacheme.get_all([node_cls(name="fine"), node_cls(name=key)])
    stats = cacheme.stats(node_cls)
    assert loaded == []
    assert (stats.load_count(), stats.storage_error_count()) == (0, 0)
