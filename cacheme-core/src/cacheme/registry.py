"""The storages registered by name, which nodes' ``Cache(storage=...)`` refer to."""

from __future__ import annotations

import logging
import typing

from cacheme import bus, lease
from cacheme.errors import StorageConfigError, StorageNotRegistered
from cacheme.health import HealthSnapshot
from cacheme.plugins import bus_class_for
from cacheme.storage import BaseStorage, LocalStorage

__all__ = [
    "bus_health",
    "generation",
    "lookup",
    "register_storage",
    "registered_storages",
    "storage_health",
    "unregister_storage",
]

logger = logging.getLogger("cacheme")

_storages: dict[str, BaseStorage] = {}
# Bumped on every change, so nodes know to look their storages up again.
_generation = 0


def generation() -> int:
    return _generation


async def register_storage(name: str, storage: BaseStorage) -> None:
    """Connect ``storage`` and make it available under ``name``.

    Connection errors are raised here, not at the first request. Registering
    a name again replaces the storage; the one it replaces is closed unless it
    is still registered under another name. A storage already registered
    (under this name or another) is not connected again.
    """
    global _generation
    if not isinstance(name, str) or not name:
        raise StorageConfigError(f"storage name must be a non-empty str, got {name!r}")
    if not isinstance(storage, BaseStorage):
        raise StorageConfigError(
            f"register_storage({name!r}, ...) needs a storage built by cacheme.Storage(url), "
            f"got {type(storage).__name__}"
        )
    bus_storage = _bus_storage_of(name, storage)
    if not _is_registered(storage):
        await storage.connect()
    if storage.breaker.name is None:
        storage.breaker.name = name
    if bus_storage is not None and isinstance(storage, LocalStorage) and storage.bus_hub is None:
        await bus.bind(storage, name, typing.cast(str, storage.bus_name), bus_storage)
    previous = _storages.get(name)
    _storages[name] = storage
    _generation += 1
    if previous is not None and not _is_registered(previous):
        await _close_quietly(name, previous)


def _bus_storage_of(name: str, storage: BaseStorage) -> BaseStorage | None:
    """The registered storage that carries ``storage``'s bus, if it names one (checked first)."""
    if not isinstance(storage, LocalStorage) or storage.bus_name is None:
        return None
    bus_name = storage.bus_name
    bus_storage = _storages.get(bus_name)
    if bus_storage is None:
        raise StorageConfigError(
            f"storage {name!r} listens on bus {bus_name!r}, which is not registered: register "
            f"{bus_name!r} (the shared storage whose server carries the bus) first"
        )
    if bus_storage.is_local:
        raise StorageConfigError(f"storage {name!r}: bus {bus_name!r} is a local storage; name a shared one")
    if type(storage).clear_sync is LocalStorage.clear_sync:
        raise StorageConfigError(
            f"storage {name!r} ({type(storage).__name__}) cannot listen on a bus: it has no clear_sync, "
            "and a storage that lost its bus must be emptied"
        )
    bus_class_for(bus_storage)  # a scheme with no bus is an error here
    return bus_storage


async def unregister_storage(name: str) -> None:
    """Forget the storage registered under ``name``; close it unless it is registered under another name."""
    global _generation
    storage = _storages.pop(name, None)
    if storage is None:
        raise StorageNotRegistered(f"no storage is registered as {name!r}")
    _generation += 1
    if not _is_registered(storage):
        await _close_quietly(name, storage)


def _is_registered(storage: BaseStorage) -> bool:
    """Whether ``storage`` (this very object) is registered under some name."""
    return any(registered is storage for registered in _storages.values())


async def _close_quietly(name: str, storage: BaseStorage) -> None:
    try:
        if isinstance(storage, LocalStorage):
            await bus.unbind(storage)
        else:
            await lease.drop(storage)
        await storage.close()
    except Exception:
        logger.exception("cacheme: closing storage %r failed", name)


def storage_health(name: str) -> HealthSnapshot:
    """The circuit breaker of the storage registered as ``name``: its state and counters."""
    storage = _storages.get(name)
    if storage is None:
        raise StorageNotRegistered(f"no storage is registered as {name!r}")
    return storage.breaker.snapshot()


def bus_health(name: str) -> bus.BusSnapshot:
    """The invalidation bus carried by the storage registered as ``name``: subscribed or not, and its
    counters. A StorageNotRegistered error when no local storage listens on it."""
    hub = bus.hub_named(name)
    if hub is None:
        raise StorageNotRegistered(f"no local storage listens on a bus of storage {name!r}")
    return hub.snapshot()


def registered_storages() -> dict[str, BaseStorage]:
    return dict(_storages)


def lookup(name: str, node_name: str) -> BaseStorage:
    storage = _storages.get(name)
    if storage is None:
        known = ", ".join(sorted(_storages)) or "none"
        raise StorageNotRegistered(
            f"{node_name} caches in storage {name!r}, which is not registered "
            f"(registered: {known}); call "
            f"`await cacheme.register_storage({name!r}, cacheme.Storage(url))` first"
        )
    return storage
