"""The storages registered by name, which nodes' ``Cache(storage=...)`` refer to."""

from __future__ import annotations

import logging

from cacheme.errors import StorageConfigError, StorageNotRegistered
from cacheme.health import HealthSnapshot
from cacheme.storage import BaseStorage

__all__ = [
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
    if not _is_registered(storage):
        await storage.connect()
    if storage.breaker.name is None:
        storage.breaker.name = name
    previous = _storages.get(name)
    _storages[name] = storage
    _generation += 1
    if previous is not None and not _is_registered(previous):
        await _close_quietly(name, previous)


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
        await storage.close()
    except Exception:
        logger.exception("cacheme: closing storage %r failed", name)


def storage_health(name: str) -> HealthSnapshot:
    """The circuit breaker of the storage registered as ``name``: its state and counters."""
    storage = _storages.get(name)
    if storage is None:
        raise StorageNotRegistered(f"no storage is registered as {name!r}")
    return storage.breaker.snapshot()


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
