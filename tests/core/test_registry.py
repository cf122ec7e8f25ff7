"""Issue 10, point 8: the registry connects a storage once, and closes it only when no name refers to it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme.storage import MISSING


class CountingStorage(cacheme.LocalStorage):
    """A dict storage that counts how often it is connected and closed, and refuses use while closed."""

    def __init__(self) -> None:
        super().__init__("counting://")
        self.connects = 0
        self.closes = 0
        self.data: dict[str, Any] = {}

    def is_open(self) -> bool:
        return self.connects > self.closes

    async def connect(self) -> None:
        self.connects += 1

    async def close(self) -> None:
        self.closes += 1

    def get_sync(self, key: str) -> Any:
        if not self.is_open():
            raise RuntimeError("closed")
        return self.data.get(key, MISSING)

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        if not self.is_open():
            raise RuntimeError("closed")
        self.data[key] = value

    def delete_sync(self, key: str) -> None:
        self.data.pop(key, None)


@pytest.fixture
def names() -> list[str]:
    return ["reg-a", "reg-b"]


async def unregister_all(names: list[str]) -> None:
    for name in names:
        if name in cacheme.registered_storages():
            await cacheme.unregister_storage(name)


async def test_the_same_storage_registered_twice_is_connected_once(names: list[str]) -> None:
    storage = CountingStorage()
    try:
        await cacheme.register_storage("reg-a", storage)
        await cacheme.register_storage("reg-a", storage)
        await cacheme.register_storage("reg-b", storage)
        assert (storage.connects, storage.closes) == (1, 0)
    finally:
        await unregister_all(names)
    assert (storage.connects, storage.closes) == (1, 1)


async def test_unregistering_one_name_keeps_the_storage_open_for_the_other(names: list[str]) -> None:
    storage = CountingStorage()
    try:
        await cacheme.register_storage("reg-a", storage)
        await cacheme.register_storage("reg-b", storage)
        await cacheme.unregister_storage("reg-a")
        assert storage.is_open()
        await cacheme.unregister_storage("reg-b")
        assert not storage.is_open()
        assert storage.closes == 1
    finally:
        await unregister_all(names)


async def test_replacing_a_name_closes_the_old_storage_only_when_no_other_name_has_it(
    names: list[str],
) -> None:
    shared, other = CountingStorage(), CountingStorage()
    try:
        await cacheme.register_storage("reg-a", shared)
        await cacheme.register_storage("reg-b", shared)
        await cacheme.register_storage("reg-a", other)
        assert shared.is_open()  # still "reg-b"
        await cacheme.register_storage("reg-b", other)
        assert not shared.is_open()
        assert (other.connects, other.closes) == (1, 0)
    finally:
        await unregister_all(names)
    assert not other.is_open()
