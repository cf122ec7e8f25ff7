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

A backend whose server can carry invalidations between processes also
implements ``cacheme_bus_schemes``, naming its ``cacheme.bus.Bus`` the same way,
and one that can hold leases ``cacheme_lease_schemes``, naming its
``cacheme.lease.Leases``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

from cacheme.errors import StorageConfigError
from cacheme.health import Health
from cacheme.storage import BaseStorage, LocalStorage

if TYPE_CHECKING:
    from cacheme.bus import Bus
    from cacheme.lease import Leases

__all__ = [
    "ENTRY_POINT_GROUP",
    "hookimpl",
    "hookspec",
    "Storage",
    "bus_schemes",
    "installed_schemes",
    "lease_class_for",
    "lease_schemes",
]

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

    @hookspec
    def cacheme_bus_schemes(self) -> dict[str, str]:  # type: ignore[empty-body]
        """Map each URL scheme whose server can carry invalidations to ``"module.path:name"``,
        a ``cacheme.bus.Bus`` subclass built with the registered storage: ``Bus(storage)``."""

    @hookspec
    def cacheme_lease_schemes(self) -> dict[str, str]:  # type: ignore[empty-body]
        """Map each URL scheme whose server can hold leases to ``"module.path:name"``, a
        ``cacheme.lease.Leases`` subclass built with the registered storage: ``Leases(storage)``."""


HOOKS = ("cacheme_storage_schemes", "cacheme_bus_schemes", "cacheme_lease_schemes")

_lock = threading.Lock()
_found: dict[str, dict[str, str]] | None = None


def _load() -> dict[str, dict[str, str]]:
    """For each hook, what the installed plugins answer: scheme -> "module.path:name"."""
    manager = pluggy.PluginManager("cacheme")
    manager.add_hookspecs(_HookSpecs)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        # Loaded one by one (not load_setuptools_entrypoints) so that one
        # broken third-party plugin cannot keep the others from loading.
        try:
            plugin = entry_point.load()
            if manager.get_plugin(entry_point.name) is None:
                manager.register(plugin, name=entry_point.name)
        except Exception:
            logger.exception("cacheme: storage plugin %r failed to load; skipped", entry_point.name)
    found: dict[str, dict[str, str]] = {hook: {} for hook in HOOKS}
    for hook_name in HOOKS:
        # Each implementation called by itself (through pluggy's hook, which checked its
        # arguments against the spec at registration), so that one failing plugin is skipped.
        for implementation in getattr(manager.hook, hook_name).get_hookimpls():
            try:
                answer = implementation.function()
                if not isinstance(answer, dict):
                    raise TypeError(f"{hook_name} returned {type(answer).__name__}, not dict")
            except Exception:
                logger.exception(
                    "cacheme: storage plugin %r failed to answer %s; skipped",
                    implementation.plugin_name,
                    hook_name,
                )
                continue
            for scheme, target in answer.items():
                found[hook_name].setdefault(str(scheme).lower(), str(target))
    return found


def _discovered(hook: str) -> dict[str, str]:
    global _found
    with _lock:
        if _found is None:
            _found = _load()
        return dict(_found[hook])


def installed_schemes() -> dict[str, str]:
    """Every URL scheme an installed plugin serves, with its storage class path."""
    return _discovered("cacheme_storage_schemes")


def bus_schemes() -> dict[str, str]:
    """Every URL scheme whose storages can carry an invalidation bus, with the bus class path."""
    return _discovered("cacheme_bus_schemes")


def lease_schemes() -> dict[str, str]:
    """Every URL scheme whose storages can hold leases, with the leases class path."""
    return _discovered("cacheme_lease_schemes")


def reload_plugins() -> None:
    """Forget what was discovered, so that plugins installed since are found."""
    global _found
    with _lock:
        _found = None


def _import_target(scheme: str, target: str, what: str = "storage") -> Callable[..., Any]:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, class_name)
    except ImportError as error:
        hint = KNOWN_DISTRIBUTIONS.get(scheme)
        extra = f" (pip install {hint})" if hint else ""
        raise StorageConfigError(
            f"{what} for scheme {scheme!r} could not import its driver: {error}{extra}"
        ) from error
    except AttributeError as error:
        raise StorageConfigError(f"{what} for scheme {scheme!r}: {target!r} does not exist") from error
    if not callable(found):
        raise StorageConfigError(f"{what} for scheme {scheme!r}: {target!r} is not a class or factory")
    return found  # type: ignore[no-any-return]


def bus_class_for(storage: BaseStorage) -> Callable[[BaseStorage], Bus]:
    """The bus class of ``storage``'s scheme; a StorageConfigError when its backend offers none."""
    scheme = storage.url.split("://", 1)[0].lower()
    buses = bus_schemes()
    target = buses.get(scheme)
    if target is None:
        offered = ", ".join(sorted(buses)) or "none installed"
        raise StorageConfigError(
            f"{storage!r} cannot carry an invalidation bus: no installed plugin offers one for "
            f"{scheme}:// (buses: {offered})"
        )
    return _import_target(scheme, target, "bus")


def lease_class_for(storage: BaseStorage) -> Callable[[BaseStorage], Leases] | None:
    """The leases class of ``storage``'s scheme; None when its backend offers none."""
    scheme = storage.url.split("://", 1)[0].lower()
    target = lease_schemes().get(scheme)
    return None if target is None else _import_target(scheme, target, "leases")


def Storage(  # noqa: N802 - the public name of the original API
    url: str, *, health: Health | None = None, bus: str | None = None, **options: Any
) -> BaseStorage:
    """Build the storage that serves ``url``'s scheme, with backend ``options``.

    ``health`` bounds each operation the engine sends it and sets its circuit
    breaker (default ``cacheme.Health()``; ``Health.off()`` for neither); it
    is checked here, like every option. ``bus`` (local storages only) names
    the registered storage whose server carries this storage's invalidations
    (see ``cacheme.bus``). Nothing connects yet: pass the result to
    ``cacheme.register_storage``.
    """
    if health is not None and not isinstance(health, Health):
        raise StorageConfigError(f"health must be a cacheme.Health, got {health!r}")
    if bus is not None and (not isinstance(bus, str) or not bus):
        raise StorageConfigError(f"bus must be the name of a registered storage, got {bus!r}")
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
    storage: BaseStorage = _import_target(scheme, target)(url, **options)
    if not isinstance(storage, BaseStorage):
        raise StorageConfigError(
            f"storage for scheme {scheme!r}: {target!r} built {storage!r}, not a BaseStorage"
        )
    if health is not None:
        storage.use_health(health)
    if bus is not None:
        if not isinstance(storage, LocalStorage):
            raise StorageConfigError(
                f"bus={bus!r}: only a local storage listens on a bus ({url!r} is shared already)"
            )
        storage.bus_name = bus
    return storage
