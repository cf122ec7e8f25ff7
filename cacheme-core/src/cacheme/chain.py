"""The chain of tiers: what one tier operation is, under its storage's deadline and breaker.

``Tier`` is one tier of a node's chain. The functions here read, write and
delete on one tier (or the tiers of a chain) and never raise a storage's
failure: a read that fails or is skipped (breaker open) is a miss, a write
is skipped, both counted in the node's stats and logged; failures and
successes feed the storage's circuit breaker (``cacheme.health``). Decoding
bytes read from a remote tier is here too: bytes that do not decode are a
counted miss. The engine decides which tiers to read and write, and when.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cacheme.health import within
from cacheme.storage import MISSING, BaseStorage, LocalStorage

if TYPE_CHECKING:
    from cacheme.engine import NodeConfig

__all__ = [
    "ERROR_LOG_INTERVAL",
    "ERROR_REPR_LIMIT",
    "Tier",
    "decode_found",
    "delete",
    "local_read_failed",
    "read_remote",
    "storage_failed",
    "write_local",
    "write_remotes",
]

logger = logging.getLogger("cacheme")

# A storage that keeps failing is logged at most once per this many seconds.
ERROR_LOG_INTERVAL = 1.0
# The longest repr of a storage error that is logged (msgpack's ExtraData carries the whole value).
ERROR_REPR_LIMIT = 500


class Tier:
    __slots__ = ("local", "name", "storage", "ttl")

    def __init__(self, name: str, storage: BaseStorage, ttl: Any) -> None:
        self.name = name
        self.storage = storage
        self.ttl = ttl
        self.local = storage.is_local


# ---------------------------------------------------------------- reporting


_last_logged: dict[str, float] = {}


def storage_failed(
    config: NodeConfig, tier: Tier, operation: str, error: BaseException, keys: int = 1
) -> None:
    """Count (one per key affected) and log a failed storage operation."""
    config.metrics._storage_errors += keys
    now = time.monotonic()
    if now - _last_logged.get(tier.name, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
        _last_logged[tier.name] = now
        logger.warning(
            "cacheme: %s on storage %r failed for %s: %s (treated as %s; repeats within %.0fs are counted, "
            "not logged)",
            operation,
            tier.name,
            config.node_class.__qualname__,
            _short_repr(error),
            "a miss" if operation == "read" else "skipped",
            ERROR_LOG_INTERVAL,
        )


def _short_repr(error: BaseException) -> str:
    """``repr(error)``, cut to ``ERROR_REPR_LIMIT`` characters: an error may carry a whole value."""
    text = repr(error)
    if len(text) > ERROR_REPR_LIMIT:
        return f"{text[:ERROR_REPR_LIMIT]}... ({len(text)} characters)"
    return text


# ---------------------------------------------------------------- tiers


def _decode(config: NodeConfig, raw: bytes) -> Any:
    assert config.serializer is not None
    value = config.serializer.loads(raw)
    if config.adapter is not None:
        value = config.adapter.validate_python(value)
    return value


def decode_found(config: NodeConfig, tier: Tier, raws: Mapping[str, bytes]) -> dict[str, Any]:
    """``{key: value}`` of the bytes a remote tier returned; bytes that do not decode are misses."""
    found: dict[str, Any] = {}
    for key, raw in raws.items():
        try:
            found[key] = _decode(config, raw)
        except Exception as error:
            storage_failed(config, tier, "read", error)
    return found


def write_local(config: NodeConfig, tiers: Sequence[Tier], values: Mapping[str, Any]) -> None:
    """Write ``values`` into the local tiers among ``tiers`` (at once, no await); failures are counted."""
    for tier in tiers:
        if tier.local:
            local = typing.cast(LocalStorage, tier.storage)
            try:
                for key, value in values.items():
                    local.set_sync(key, value, tier.ttl)
            except Exception as error:
                storage_failed(config, tier, "write", error, len(values))


def local_read_failed(config: NodeConfig, index: int, error: Exception) -> Any:
    """A leading local tier's read raised: count and log it, and answer as a miss."""
    storage_failed(config, config.tiers[index], "read", error)
    return MISSING


async def write_remotes(
    config: NodeConfig,
    tiers: Sequence[Tier],
    values: Mapping[str, Any],
    encoded: Mapping[str, bytes] | None = None,
    *,
    write_back: bool = True,
) -> None:
    """Write ``values`` into the remote tiers among ``tiers``, concurrently.

    ``encoded`` holds bytes already read for some keys, written as they are.
    A ``write_back`` (a fetch's, whose callers were answered already) is not
    given up when its task is cancelled: see ``write_remote``.
    """
    remote = [tier for tier in tiers if not tier.local]
    if not remote or not values:
        return
    payload: dict[str, bytes] = {}
    assert config.serializer is not None
    for key, value in values.items():
        raw = encoded.get(key) if encoded is not None else None
        if raw is None:
            try:
                raw = config.serializer.dumps(value)
            except Exception as error:
                storage_failed(config, remote[0], "write", error)
                continue
        payload[key] = raw
    if not payload:
        return
    if len(remote) == 1:
        await _write_remote(config, remote[0], payload, write_back)
        return
    writes = asyncio.gather(*(_write_remote(config, tier, payload, write_back) for tier in remote))
    try:
        await asyncio.shield(writes)
    except asyncio.CancelledError:
        if not write_back:
            raise
        _uncancel_current_task()
        await writes  # each write finishes (or is sent again) by itself


async def _write_remote(
    config: NodeConfig, tier: Tier, payload: Mapping[str, bytes], write_back: bool
) -> None:
    """Write ``payload`` into one remote tier; a failure is counted and logged, never raised.

    A write-back cut off by a cancel is sent once more, in full: ``asyncio.run``
    cancels every task of its loop (drivers' own tasks included) when its main
    coroutine ends, and the write-backs of the last requests would be lost.
    The loop's shutdown waits for it; the fetch then ends normally.
    """
    try:
        await _send(config, tier, payload)
    except asyncio.CancelledError:
        if not write_back:
            raise
        _uncancel_current_task()
        await _send(config, tier, payload)


def _uncancel_current_task() -> None:
    """Take back the cancel the running task has just caught (Python 3.11+ counts them)."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


async def _send(config: NodeConfig, tier: Tier, payload: Mapping[str, bytes]) -> None:
    """One write of ``payload`` to ``tier``, under the storage's write deadline and breaker.

    Skipped while the breaker is open; a failure (or the deadline) is counted,
    logged and fed to the breaker, never raised. A cancel is raised.
    """
    storage = tier.storage
    breaker = storage.breaker
    if not breaker.allow_write():
        return
    try:
        if len(payload) == 1:
            ((key, raw),) = payload.items()
            await within(storage.health.write_timeout, storage.set(key, raw, tier.ttl))
        else:
            await within(storage.health.write_timeout, storage.set_many(payload, tier.ttl))
    except Exception as error:
        _feed_failure(storage)
        storage_failed(config, tier, "write", error, len(payload))
    except BaseException:
        breaker.record_abandoned()
        raise
    else:
        breaker.record_success()


def _feed_failure(storage: BaseStorage) -> None:
    """Feed a failure to the storage's breaker; when that opens it, drop the storage's connections."""
    if storage.breaker.record_failure():
        storage.drop_connections()


async def read_remote(config: NodeConfig, tier: Tier, keys: list[str]) -> dict[str, bytes] | None:
    """The bytes ``tier`` holds for ``keys``, under the storage's read deadline and breaker.

    None when the read was skipped (breaker open) or failed (counted, logged,
    fed to the breaker): a miss either way. A cancel is raised.
    """
    storage = tier.storage
    breaker = storage.breaker
    if not breaker.allow():
        return None
    try:
        if len(keys) == 1:
            raw = await within(storage.health.read_timeout, storage.get(keys[0]))
            raws = {} if raw is None else {keys[0]: raw}
        else:
            raws = await within(storage.health.read_timeout, storage.get_many(keys))
    except Exception as error:
        _feed_failure(storage)
        storage_failed(config, tier, "read", error, len(keys))
        return None
    except BaseException:
        breaker.record_abandoned()
        raise
    breaker.record_success()
    return raws


async def delete(config: NodeConfig, tier: Tier, key: str) -> None:
    """Delete ``key`` from ``tier``, under the storage's read deadline, even while its breaker is open
    (a value left behind would be served once the storage is back); a failure is counted and logged."""
    storage = tier.storage
    try:
        await within(storage.health.read_timeout, storage.delete(key))
    except Exception as error:
        _feed_failure(storage)
        storage_failed(config, tier, "delete", error)
    else:
        storage.breaker.record_success()
