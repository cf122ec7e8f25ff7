"""Finding storage backends: pluggy plugins announced through entry points.

A backend distribution declares an entry point in group ``cacheme.storages``
that names a small module. That module implements the hook
``cacheme_storage_schemes`` and returns, for each URL scheme it serves, the
dotted path of the storage class as a string, so that no driver is imported
until a URL with that scheme is used::

    from cacheme import hookimpl

    @hookimpl
    def cacheme_storage_schemes() -> dict[str, str]:
        return {"redis": "cacheme_redis.storage:RedisStorage"}
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable
from typing import Any

import pluggy

from cacheme.errors import StorageConfigError
from cacheme.health import Health
from cacheme.storage import BaseStorage

__all__ = ["ENTRY_POINT_GROUP", "hookimpl", "hookspec", "Storage", "installed_schemes"]

ENTRY_POINT_GROUP = "cacheme.storages"

hookspec = pluggy.HookspecMarker("cacheme")
hookimpl = pluggy.HookimplMarker("cacheme")

logger = logging.getLogger("cacheme")

# Which distribution to install for the schemes the project ships.
KNOWN_DISTRIBUTIONS: dict[str, str] = {
    "local": "cacheme-local",
    "redis": "cacheme-redis",
    "rediss": "cacheme-redis",
    "unix": "cacheme-redis",
    "sqlite": "cacheme-sql[sqlite]",
    "postgresql": "cacheme-sql[postgres]",
    "postgres": "cacheme-sql[postgres]",
    "mysql": "cacheme-sql[mysql]",
    "mongodb": "cacheme-mongo",
    "mongodb+srv": "cacheme-mongo",
}


class _HookSpecs:
    @hookspec
    def cacheme_storage_schemes(self) -> dict[str, str]:  # type: ignore[empty-body]
        """Map each URL scheme this plugin serves to ``"module.path:name"``, where
        the name is a BaseStorage subclass or a factory ``(url, **options) -> BaseStorage``."""


_lock = threading.Lock()
_schemes: dict[str, str] | None = None


def _load_schemes() -> dict[str, str]:
    manager = pluggy.PluginManager("cacheme")
    manager.add_hookspecs(_HookSpecs)
    schemes: dict[str, str] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        # Loaded one by one (not load_setuptools_entrypoints) so that one
        # broken third-party plugin cannot keep the others from loading.
        try:
            plugin = entry_point.load()
            if manager.get_plugin(entry_point.name) is None:
                manager.register(plugin, name=entry_point.name)
        except Exception:
            logger.exception("cacheme: storage plugin %r failed to load; skipped", entry_point.name)
    for plugin_name, plugin in manager.list_name_plugin():
        hook = getattr(plugin, "cacheme_storage_schemes", None)
        if hook is None:
            continue
        try:
            answer = hook()
            if not isinstance(answer, dict):
                raise TypeError(f"cacheme_storage_schemes returned {type(answer).__name__}, not dict")
        except Exception:
            logger.exception("cacheme: storage plugin %r failed to answer; skipped", plugin_name)
            continue
        for scheme, target in answer.items():
            schemes.setdefault(str(scheme).lower(), str(target))
    return schemes


def installed_schemes() -> dict[str, str]:
    """Every URL scheme an installed plugin serves, with its storage class path."""
    global _schemes
    with _lock:
        if _schemes is None:
            _schemes = _load_schemes()
        return dict(_schemes)


def reload_plugins() -> None:
    """Forget what was discovered, so that plugins installed since are found."""
    global _schemes
    with _lock:
        _schemes = None


def _import_target(scheme: str, target: str) -> Callable[..., BaseStorage]:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        storage_class = getattr(module, class_name)
    except ImportError as error:
        hint = KNOWN_DISTRIBUTIONS.get(scheme)
        extra = f" (pip install {hint})" if hint else ""
        raise StorageConfigError(
            f"storage for scheme {scheme!r} could not import its driver: {error}{extra}"
        ) from error
    except AttributeError as error:
        raise StorageConfigError(f"storage for scheme {scheme!r}: {target!r} does not exist") from error
    if not callable(storage_class):
        raise StorageConfigError(f"storage for scheme {scheme!r}: {target!r} is not a class or factory")
    return storage_class  # type: ignore[no-any-return]


def Storage(url: str, *, health: Health | None = None, **options: Any) -> BaseStorage:  # noqa: N802 - the public name of the original API
    """Build the storage that serves ``url``'s scheme, with backend ``options``.

    ``health`` bounds each operation the engine sends it and sets its circuit
    breaker (default ``cacheme.Health()``; ``Health.off()`` for neither); it
    is checked here, like every option. Nothing connects yet: pass the result
    to ``cacheme.register_storage``.
    """
    if health is not None and not isinstance(health, Health):
        raise StorageConfigError(f"health must be a cacheme.Health, got {health!r}")
    if not isinstance(url, str) or "://" not in url:
        raise StorageConfigError(f"storage url must look like 'scheme://...', got {url!r}")
    scheme = url.split("://", 1)[0].lower()
    schemes = installed_schemes()
    target = schemes.get(scheme)
    if target is None:
        installed = ", ".join(sorted(schemes)) or "none"
        hint = KNOWN_DISTRIBUTIONS.get(scheme)
        advice = f"; install {hint!r} to use it" if hint else ""
        raise StorageConfigError(
            f"no storage serves scheme {scheme!r} (installed schemes: {installed}){advice}"
        )
    storage = _import_target(scheme, target)(url, **options)
    if not isinstance(storage, BaseStorage):
        raise StorageConfigError(
            f"storage for scheme {scheme!r}: {target!r} built {storage!r}, not a BaseStorage"
        )
    if health is not None:
        storage.use_health(health)
    return storage
