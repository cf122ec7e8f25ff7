"""The Redis commands the storage sends, on one client that belongs to one event loop.

Batches cost one round trip per server: a single server gets one MGET, one
DEL, or one non-transactional pipeline of SETs. A cluster gets the keys
grouped by hash slot (a command may only name keys of one slot), one command
per slot, sent as a cluster pipeline: redis-py sends each node its share in
one round trip, all nodes in parallel. No CROSSSLOT error is possible.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import cast

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["RedisCommands", "WriteRequest"]

# Keys per MGET: a larger read is split into several MGETs in one pipeline, so
# that no single command keeps the server busy for long.
MGET_CHUNK = 10_000

# Values to write with one expiry in milliseconds (None: never expires).
WriteRequest = tuple[Mapping[str, bytes], "int | None"]


class RedisCommands:
    def __init__(self, client: Redis | RedisCluster, pool_size: int, pool_timeout: float) -> None:
        self.client = client
        self._pool_timeout = pool_timeout
        # redis-py's cluster client fails at once when a node has no free
        # connection; this semaphore makes a request wait for one instead,
        # like the BlockingConnectionPool of a single server.
        self._cluster_slots = asyncio.Semaphore(pool_size) if isinstance(client, RedisCluster) else None

    async def connect(self) -> None:
        async with self._slot():
            if isinstance(self.client, RedisCluster):
                await self.client.initialize()
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()

    async def get(self, key: str) -> bytes | None:
        async with self._slot():
            # Responses are never decoded (decode_responses is refused): bytes or None.
            return cast("bytes | None", await self.client.get(key))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key (None when absent), aligned with ``keys``."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return []
        async with self._slot():
            groups = [
                group[start : start + MGET_CHUNK]
                for group in self._by_slot(unique)
                for start in range(0, len(group), MGET_CHUNK)
            ]
            if len(groups) == 1:
                values = cast("list[bytes | None]", await self.client.execute_command("MGET", *unique))
                if len(unique) == len(keys):
                    return values  # no key repeated: already aligned with ``keys``
                found = dict(zip(unique, values, strict=True))
            else:
                pipe = self.client.pipeline(transaction=False)
                for group in groups:
                    # (redis-py blocks pipe.mget on a cluster; the raw command is routed by its slot.)
                    pipe.execute_command("MGET", *group)
                replies: list[list[bytes | None]] = await pipe.execute()
                found = {}
                for group, group_values in zip(groups, replies, strict=True):
                    found.update(zip(group, group_values, strict=True))
        return [found[key] for key in keys]

    async def set(self, key: str, value: bytes, ttl_ms: int | None) -> None:
        async with self._slot():
            await self.client.set(key, value, px=ttl_ms)

    async def set_many(self, forever: Mapping[str, bytes], expiring: Mapping[str, tuple[bytes, int]]) -> None:
        """Write keys without expiry (``forever``) and with one (``expiring``: value, ms) in one round
        trip per server: MSET for the first (one per hash slot on a cluster), ``SET key value PX ms``
        for the others, in one non-transactional pipeline. A key is in at most one of the two."""
        if not forever and not expiring:
            return
        async with self._slot():
            groups = self._by_slot(list(forever)) if forever else []
            if len(groups) == 1 and not expiring:
                await self.client.execute_command("MSET", *_pairs(forever.items()))
                return
            pipe = self.client.pipeline(transaction=False)
            for group in groups:
                pipe.execute_command("MSET", *_pairs((key, forever[key]) for key in group))
            for key, (value, ttl_ms) in expiring.items():
                pipe.execute_command("SET", key, value, "PX", ttl_ms)
            await pipe.execute()

    async def delete(self, key: str) -> None:
        async with self._slot():
            await self.client.delete(key)

    async def publish(self, channel: str, payload: bytes) -> None:
        """PUBLISH; on a cluster any node takes it and delivers it to every node's subscribers."""
        async with self._slot():
            await self.client.publish(channel, payload)

    async def delete_many(self, keys: Sequence[str]) -> None:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return
        async with self._slot():
            groups = self._by_slot(unique)
            if len(groups) == 1:
                await self.client.delete(*unique)
                return
            pipe = self.client.pipeline(transaction=False)
            for group in groups:
                pipe.execute_command("DEL", *group)
            await pipe.execute()

    def _by_slot(self, keys: list[str]) -> list[list[str]]:
        client = self.client
        if not isinstance(client, RedisCluster):
            return [keys]
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(client.keyslot(key), []).append(key)
        return list(groups.values())

    def _slot(self) -> _ClusterSlot:
        return _ClusterSlot(self._cluster_slots, self._pool_timeout)


def _pairs(items: Iterable[tuple[str, bytes]]) -> Iterator[str | bytes]:
    """``key1, value1, key2, value2, ...``: MSET's arguments."""
    return itertools.chain.from_iterable(items)


class _ClusterSlot:
    """Holds one of the cluster's pool_size request slots (a no-op on a single server)."""

    __slots__ = ("_semaphore", "_timeout")

    def __init__(self, semaphore: asyncio.Semaphore | None, timeout: float) -> None:
        self._semaphore = semaphore
        self._timeout = timeout

    async def __aenter__(self) -> None:
        if self._semaphore is None:
            return
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._timeout)
        except asyncio.TimeoutError:
            raise RedisConnectionError(
                f"no free cluster connection within pool_timeout={self._timeout}s"
            ) from None

    async def __aexit__(self, *exc_info: object) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
