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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from cacheme.entry import LEASE_MARK, Entry, copy_expiry, pack, unpack
from cacheme.health import within
from cacheme.storage import MISSING, BaseStorage, LocalStorage, ttl_milliseconds

if TYPE_CHECKING:
    from cacheme.bus import BusHub
    from cacheme.config import NodeConfig

__all__ = [
    "ERROR_LOG_INTERVAL",
    "ERROR_REPR_LIMIT",
    "Tier",
    "decode_found",
    "delete",
    "guarded",
    "local_read_failed",
    "read_remote",
    "storage_failed",
    "uncancel_current_task",
    "write_local",
    "write_remotes",
]

logger = logging.getLogger("cacheme")

T = TypeVar("T")

# A storage that keeps failing is logged at most once per this many seconds.
ERROR_LOG_INTERVAL = 1.0
# The longest repr of a storage error that is logged (msgpack's ExtraData carries the whole value).
ERROR_REPR_LIMIT = 500


class Tier:
    """One tier of a node's chain: its storage's name, the storage, its ttl (and in seconds)."""

    __slots__ = ("hub", "local", "name", "seconds", "storage", "ttl")

    def __init__(self, name: str, storage: BaseStorage, ttl: timedelta | None) -> None:
        self.name = name
        self.storage = storage
        self.ttl = ttl
        self.seconds = None if ttl is None else ttl.total_seconds()
        self.local = storage.is_local
        # The invalidation bus a local tier listens on (cacheme.bus.BusHub), if any.
        self.hub: BusHub | None = storage.bus_hub if isinstance(storage, LocalStorage) else None


# ---------------------------------------------------------------- reporting


_last_logged: dict[str, float] = {}


def storage_failed(
    config: NodeConfig, tier: Tier, operation: str, error: BaseException, keys: int = 1
) -> None:
    """Count (one per key affected, in the node's stats and the storage's) and log a failed
    storage operation."""
    config.metrics._storage_errors += keys
    counts = tier.storage.error_counts
    counts[operation] = counts.get(operation, 0) + keys
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
            _TREATED_AS.get(operation, "skipped"),
            ERROR_LOG_INTERVAL,
        )


_TREATED_AS = {"read": "a miss", "lease": "no lease: each process loads by itself"}


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


def decode_found(
    config: NodeConfig, tier: Tier, raws: Mapping[str, bytes]
) -> tuple[dict[str, Entry], dict[str, bytes]]:
    """The entries in the bytes a remote tier returned, and the serialized value of each.

    Bytes that do not decode (or carry a header this version does not read)
    are counted misses; a lease's mark is a miss.
    """
    entries: dict[str, Entry] = {}
    bodies: dict[str, bytes] = {}
    for key, raw in raws.items():
        if raw.startswith(LEASE_MARK):  # leased: being loaded by some process
            continue
        try:
            loaded_at, load_time, expires_at, body = unpack(raw)
            value = _decode(config, body)
        except Exception as error:
            storage_failed(config, tier, "read", error)
            continue
        entries[key] = Entry(value, loaded_at, load_time, expires_at)
        bodies[key] = body
    return entries, bodies


def _copy_for(tier: Tier, entry: Entry, now: float, stale: float) -> tuple[Entry, timedelta | None] | None:
    """The copy of ``entry`` that ``tier`` gets now and the ttl to write it with (its remaining
    life, plus ``stale`` seconds kept for stale_if_error); None when it has no life left."""
    expires_at = copy_expiry(entry, tier.seconds, now)
    if expires_at is None:
        return entry, None
    remaining = expires_at - now
    if remaining <= 0:
        return None
    copy = entry
    if expires_at != entry.expires_at:
        copy = Entry(entry.value, entry.loaded_at, entry.load_time, expires_at)
    seconds = remaining + stale
    return copy, (timedelta.max if seconds >= _LONGEST else timedelta(seconds=seconds))


# The longest ttl a timedelta holds (less a second, for float rounding): ``timedelta.max`` means "for ever".
_LONGEST = timedelta.max.total_seconds() - 1


def write_local(
    config: NodeConfig, tiers: Sequence[Tier], entries: Mapping[str, Entry], epoch: int | None = None
) -> None:
    """Write ``entries`` into the local tiers among ``tiers`` (at once, no await); failures are counted.

    Each copy expires no later than the entry it comes from, nor than the
    tier's ttl counted from the entry's load. A tier on an invalidation bus
    is written only if nothing was invalidated since ``epoch`` (the
    ``singleflight.epoch`` when what is written was read; None: nothing was
    read, as for ``refresh``'s own value) and its bus is subscribed.
    """
    now = time.time()
    stale = config.stale_seconds
    for tier in tiers:
        if tier.local:
            local = typing.cast(LocalStorage, tier.storage)
            hub = tier.hub
            try:
                for key, entry in entries.items():
                    copy = _copy_for(tier, entry, now, stale)
                    if copy is None:
                        continue
                    if hub is None:
                        local.set_sync(key, copy[0], copy[1])
                    else:
                        hub.write(local, key, copy[0], copy[1], epoch)
            except Exception as error:
                storage_failed(config, tier, "write", error, len(entries))


def local_read_failed(config: NodeConfig, index: int, error: Exception) -> Any:
    """A leading local tier's read raised: count and log it, and answer as a miss."""
    storage_failed(config, config.tiers[index], "read", error)
    return MISSING


async def write_remotes(
    config: NodeConfig,
    tiers: Sequence[Tier],
    entries: Mapping[str, Entry],
    bodies: Mapping[str, bytes] | None = None,
    *,
    write_back: bool = True,
    marks: Mapping[str, bytes] | None = None,
) -> Sequence[str]:
    """Write ``entries`` into the remote tiers among ``tiers``, concurrently.

    ``bodies`` holds serialized values already read for some keys, written as
    they are (behind a new header). A ``write_back`` (a fetch's, whose callers
    were answered already) is not given up when its task is cancelled: see
    ``write_remote``. The keys of ``marks`` hold a lease in the node's lease
    tier: that tier gets them only where the lease still stands. Returns the
    keys of ``marks`` whose write the lease tier was sent (not those that did
    not serialize or had no life left).
    """
    remote = [tier for tier in tiers if not tier.local]
    sent: tuple[str, ...] = ()  # (not a list: one per miss would feed the garbage collector)
    if not remote or not entries:
        return sent
    serialized: dict[str, bytes] = {}
    assert config.serializer is not None
    for key, entry in entries.items():
        body = bodies.get(key) if bodies is not None else None
        if body is None:
            try:
                body = config.serializer.dumps(entry.value)
            except Exception as error:
                storage_failed(config, remote[0], "write", error)
                continue
        serialized[key] = body
    if not serialized:
        return sent
    now = time.time()
    writes = []
    for tier in remote:
        payload, ttl = _payload(config, tier, entries, serialized, now)
        if payload:
            fenced = marks if marks and tier is config.lease_tier else None
            if fenced:
                sent = tuple(key for key in payload if key in fenced)  # (one lease tier)
            writes.append(_write_remote(config, tier, payload, ttl, write_back, fenced))
    if len(writes) == 1:
        await writes[0]
        return sent
    together = asyncio.gather(*writes)
    try:
        await asyncio.shield(together)
    except asyncio.CancelledError:
        if not write_back:
            raise
        uncancel_current_task()
        await together  # each write finishes (or is sent again) by itself
    return sent


def _payload(
    config: NodeConfig, tier: Tier, entries: Mapping[str, Entry], bodies: Mapping[str, bytes], now: float
) -> tuple[dict[str, bytes], timedelta | None]:
    """What ``tier`` gets: each key's header and body, and one ttl for the batch.

    A storage writes a batch with one ttl: the shortest remaining life among
    the keys (so that none lives longer than its entry; some less).
    """
    payload: dict[str, bytes] = {}
    shortest: timedelta | None = None
    stale = config.stale_seconds
    for key, body in bodies.items():
        entry = entries[key]
        copy = _copy_for(tier, entry, now, stale)
        if copy is None:
            continue
        payload[key] = pack(entry, copy[0].expires_at, body)
        ttl = copy[1]
        if ttl is not None and (shortest is None or ttl < shortest):
            shortest = ttl
    return payload, shortest


async def _write_remote(
    config: NodeConfig,
    tier: Tier,
    payload: Mapping[str, bytes],
    ttl: timedelta | None,
    write_back: bool,
    marks: Mapping[str, bytes] | None,
) -> None:
    """Write ``payload`` into one remote tier; a failure is counted and logged, never raised.

    A write-back cut off by a cancel is sent once more, in full: ``asyncio.run``
    cancels every task of its loop (drivers' own tasks included) when its main
    coroutine ends, and the write-backs of the last requests would be lost.
    The loop's shutdown waits for it; the fetch then ends normally.
    """
    try:
        await _send(config, tier, payload, ttl, marks)
    except asyncio.CancelledError:
        if not write_back:
            raise
        uncancel_current_task()
        await _send(config, tier, payload, ttl, marks)


def uncancel_current_task() -> None:
    """Take back the cancel the running task has just caught (Python 3.11+ counts them)."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


async def _send(
    config: NodeConfig,
    tier: Tier,
    payload: Mapping[str, bytes],
    ttl: timedelta | None,
    marks: Mapping[str, bytes] | None = None,
) -> None:
    """One write of ``payload`` to ``tier``, under the storage's write deadline and breaker.

    The keys of ``marks`` (leases held in this tier, see ``cacheme.lease``)
    are written only where their lease still stands. Skipped while the
    breaker is open; a failure (or the deadline) is counted, logged and fed
    to the breaker, never raised. A cancel is raised.
    """
    if marks:
        plain = {key: raw for key, raw in payload.items() if key not in marks}
        if plain:
            await _send(config, tier, plain, ttl)
        if len(plain) < len(payload):
            hub = config.lease
            assert hub is not None
            fenced = {key: raw for key, raw in payload.items() if key in marks}
            await hub.write(config, fenced, marks, None if ttl is None else ttl_milliseconds(ttl))
        return
    storage = tier.storage
    breaker = storage.breaker
    if not breaker.allow_write():
        return
    try:
        if len(payload) == 1:
            ((key, raw),) = payload.items()
            operation = storage.set(key, raw, ttl)
        else:
            operation = storage.set_many(payload, ttl)
        await within(storage.health.write_timeout, operation, storage.cancels_at_once)
    except Exception as error:
        _feed_failure(storage)
        storage_failed(config, tier, "write", error, len(payload))
    except BaseException:
        breaker.record_abandoned()
        raise
    else:
        breaker.record_success()


async def guarded(
    config: NodeConfig, tier: Tier, operation: str, keys: int, make: Callable[[], Coroutine[Any, Any, T]]
) -> T | None:
    """``await make()``: one operation on ``tier``'s storage, under its deadline and breaker.

    A ``"write"`` waits at most the write deadline and is skipped while the
    breaker refuses writes; anything else (a read, a lease) the read deadline
    and is skipped while it refuses reads. None when skipped or failed (the
    failure counted for ``keys`` keys, logged and fed to the breaker). A
    cancel is raised.
    """
    storage = tier.storage
    breaker = storage.breaker
    write = operation == "write"
    if not (breaker.allow_write() if write else breaker.allow()):
        return None
    try:
        result = await within(storage.health.write_timeout if write else storage.health.read_timeout, make())
    except Exception as error:
        _feed_failure(storage)
        storage_failed(config, tier, operation, error, keys)
        return None
    except BaseException:
        breaker.record_abandoned()
        raise
    breaker.record_success()
    return result


def _feed_failure(storage: BaseStorage) -> None:
    """Feed a failure to the storage's breaker; when that opens it, drop the storage's connections."""
    if storage.breaker.record_failure():
        storage.drop_connections()


async def read_remote(config: NodeConfig, tier: Tier, keys: list[str]) -> dict[str, bytes] | None:
    """The bytes ``tier`` holds for ``keys``, under the storage's read deadline and breaker.

    None when the read was skipped (breaker open) or failed (counted, logged,
    fed to the breaker): a miss either way. A cancel is raised. (The hot path
    of a miss: ``guarded``'s work, inline.)
    """
    storage = tier.storage
    breaker = storage.breaker
    if not breaker.allow():
        return None
    try:
        if len(keys) == 1:
            raw = await within(storage.health.read_timeout, storage.get(keys[0]), storage.cancels_at_once)
            raws = {} if raw is None else {keys[0]: raw}
        else:
            raws = await within(storage.health.read_timeout, storage.get_many(keys), storage.cancels_at_once)
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
