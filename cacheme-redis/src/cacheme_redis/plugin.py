"""Entry point of the ``cacheme.storages`` group: names the storage and bus classes, imports no driver."""

from __future__ import annotations

from cacheme.plugins import hookimpl


@hookimpl
def cacheme_storage_schemes() -> dict[str, str]:
    target = "cacheme_redis.storage:RedisStorage"
    return {"redis": target, "rediss": target, "unix": target}


@hookimpl
def cacheme_bus_schemes() -> dict[str, str]:
    target = "cacheme_redis.bus:RedisBus"
    return {"redis": target, "rediss": target, "unix": target}


@hookimpl
def cacheme_lease_schemes() -> dict[str, str]:
    target = "cacheme_redis.lease:RedisLeases"
    return {"redis": target, "rediss": target, "unix": target}
