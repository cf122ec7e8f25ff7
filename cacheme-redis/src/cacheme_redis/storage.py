"""``RedisStorage``: cacheme's storage for Redis and Redis Cluster (redis-py asyncio).

URLs: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) and
``unix:///path/to/redis.sock[?db=N]``. Options: ``cluster``, ``pool_size``,
``pool_timeout``, ``batch``; any other keyword goes to redis-py (see
``options.py``).

With ``batch=True`` (the default), the reads made in one turn of the event
loop (``get`` and ``get_many`` alike) go to Redis as one MGET, the writes
(``set`` and ``set_many``) as one pipeline and the deletes as one DEL (see
``cacheme.batching``).
At most half the pool's connections carry read batches at once, and a
quarter write batches (``batches_in_flight``): when Redis is slow and that
many wait for it, what arrives meanwhile is sent as one batch as soon as one
of them returns, instead of each turn's batch queueing for a connection.
Everything that belongs to a loop (the client, its connections, the pending
batches) is kept per event loop (``cacheme.loops.PerLoop``), so two loops in
two threads never share a connection or a batch; a loop's share is closed
when that loop shuts down, and ``close`` closes the calling loop's.

Errors are raised as redis-py raises them (``redis.exceptions.RedisError``
and its subclasses); cacheme's engine turns them into misses and skipped
writes and counts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

from cacheme.batching import Coalescer
from cacheme.loops import PerLoop
from cacheme.storage import BaseStorage, ttl_milliseconds
from cacheme_redis.commands import RedisCommands, WriteRequest
from cacheme_redis.options import RedisSettings, build_client

__all__ = ["RedisStorage"]


def split_by_expiry(
    requests: Sequence[WriteRequest],
) -> tuple[dict[str, bytes], dict[str, tuple[bytes, int]]]:
    """The keys to write without expiry and those with one; for a key written twice, the later wins."""
    forever: dict[str, bytes] = {}
    expiring: dict[str, tuple[bytes, int]] = {}
    for values, ttl_ms in requests:
        if ttl_ms is None:
            if expiring:
                for key in values:
                    expiring.pop(key, None)
            forever.update(values)
        else:
            if forever:
                for key in values:
                    forever.pop(key, None)
            for key, value in values.items():
                expiring[key] = (value, ttl_ms)
    return forever, expiring


def batches_in_flight(pool_size: int) -> tuple[int, int]:
    """How many read batches and how many write batches may be in flight at once, for ``pool_size``.

    Half the pool for reads, a quarter for writes, at least one each: batches
    never take the whole pool, so that a delete (or the other kind of batch)
    finds a connection, and a batch never waits in the pool's queue behind
    batches of its own kind; what arrives meanwhile joins the next batch.
    """
    return max(1, pool_size // 2), max(1, pool_size // 4)


class _LoopState:
    """What the storage holds for one event loop: its client and its pending batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: RedisSettings) -> None:
        self.commands = RedisCommands(build_client(settings), settings.pool_size, settings.pool_timeout)
        reads_in_flight, writes_in_flight = batches_in_flight(settings.pool_size)
        # Each request is a list of keys (one for a get); a batch is one MGET of them all.
        self.reads: Coalescer[Sequence[str], list[bytes | None]] = Coalescer(
            loop, self._read_batch, max_in_flight=reads_in_flight
        )
        # Each request is values with one expiry (one value for a set); a batch is one write pipeline.
        self.writes: Coalescer[WriteRequest, None] = Coalescer(
            loop, self._write_batch, max_in_flight=writes_in_flight
        )
        # Each request is keys to delete (one for a delete); a batch is one DEL (one per slot on a
        # cluster), sharing the writes' share of the pool.
        self.deletes: Coalescer[Sequence[str], None] = Coalescer(
            loop, self._delete_batch, max_in_flight=writes_in_flight
        )

    async def _read_batch(self, requests: list[Sequence[str]]) -> list[list[bytes | None]]:
        if len(requests) == 1:
            return [await self.commands.mget(requests[0])]
        values = await self.commands.mget([key for keys in requests for key in keys])
        answers: list[list[bytes | None]] = []
        start = 0
        for keys in requests:
            answers.append(values[start : start + len(keys)])
            start += len(keys)
        return answers

    async def _write_batch(self, requests: list[WriteRequest]) -> list[None]:
        await self.commands.set_many(*split_by_expiry(requests))
        return [None] * len(requests)

    async def _delete_batch(self, requests: list[Sequence[str]]) -> list[None]:
        await self.commands.delete_many([key for keys in requests for key in keys])
        return [None] * len(requests)

    async def close(self) -> None:
        try:
            await self.reads.drain()
            await self.writes.drain()
            await self.deletes.drain()
        finally:
            await self.commands.close()


class RedisStorage(BaseStorage):
    """A Redis (or Redis Cluster) storage; values are bytes, expiry in milliseconds.

    - ``cluster``: the URL names any node of a Redis Cluster (redis-py's ``RedisCluster``).
    - ``pool_size``: connections per server (per node on a cluster); a request waits up to
      ``pool_timeout`` seconds for a free one, then fails with a ``ConnectionError``.
    - ``batch``: coalesce concurrent single gets into one MGET and sets into one pipeline.
    """

    # A cancelled operation gives up its batch's future, or redis-py drops the connection: no I/O.
    cancels_at_once: ClassVar[bool] = True

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        pool_size: int = 100,
        pool_timeout: float = 3.0,
        batch: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(url)
        self.settings = RedisSettings.parse(
            url, cluster=cluster, pool_size=pool_size, pool_timeout=pool_timeout, batch=batch, **options
        )
        self._states: PerLoop[_LoopState] = PerLoop(
            self._new_state, _LoopState.close, name=f"client of {self!r}"
        )

    async def _new_state(self) -> _LoopState:
        return _LoopState(asyncio.get_running_loop(), self.settings)

    async def _state(self) -> _LoopState:
        """The running loop's client and batches (made on the loop's first use; no I/O)."""
        return self._states.current() or await self._states.get()

    async def connect(self) -> None:
        """Checks that the server (or the cluster) answers; raises if it does not."""
        await (await self._state()).commands.connect()

    def drop_connections(self) -> None:
        """This loop's client is replaced at the next request; the old one is closed in the background."""
        self._states.discard()

    async def close(self) -> None:
        """Sends what is pending, waits for it, and closes this event loop's connections.

        Connections belong to the loop that opened them: another running loop's
        are closed when that loop shuts down. The storage stays usable: it
        connects again on the next request.
        """
        await self._states.close()

    async def get(self, key: str) -> bytes | None:
        state = self._states.current() or await self._states.get()
        if self.settings.batch:
            return (await state.reads.submit((key,)))[0]
        return await state.commands.get(key)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        if not keys:
            return {}
        state = self._states.current() or await self._states.get()
        if self.settings.batch:
            values = await state.reads.submit(keys)
        else:
            values = await state.commands.mget(keys)
        return {key: value for key, value in zip(keys, values, strict=True) if value is not None}

    async def set(self, key: str, value: Any, ttl: timedelta | None) -> None:
        state = self._states.current() or await self._states.get()
        ttl_ms = None if ttl is None else ttl_milliseconds(ttl)
        if self.settings.batch:
            await state.writes.submit(({key: value}, ttl_ms))
        else:
            await state.commands.set(key, value, ttl_ms)

    async def set_many(self, items: Mapping[str, Any], ttl: timedelta | None) -> None:
        if not items:
            return
        state = self._states.current() or await self._states.get()
        request = (items, None if ttl is None else ttl_milliseconds(ttl))
        if self.settings.batch:
            await state.writes.submit(request)
        else:
            await state.commands.set_many(*split_by_expiry([request]))

    async def delete(self, key: str) -> None:
        state = self._states.current() or await self._states.get()
        if self.settings.batch:
            await state.deletes.submit((key,))
        else:
            await state.commands.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        state = self._states.current() or await self._states.get()
        if self.settings.batch:
            await state.deletes.submit(keys)
        else:
            await state.commands.delete_many(keys)

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        shown = (
            parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}").geturl()
            if parts.password
            else self.url
        )
        return f"RedisStorage({shown!r}, cluster={self.settings.cluster}, batch={self.settings.batch})"
