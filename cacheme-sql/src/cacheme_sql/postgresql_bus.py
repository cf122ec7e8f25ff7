"""``PostgreSQLBus``: cacheme's invalidation bus over PostgreSQL ``LISTEN``/``NOTIFY``.

Announcements are sent with ``SELECT pg_notify(channel, payload)`` on a
connection of the storage's own pool for the calling event loop (outside any
transaction, so the notification leaves at once). Each process listens on a
connection of its own, opened in cacheme's bus thread with the storage's URL
and driver options, and named ``application_name = 'cacheme-bus'`` so that
operators (and tests) find it in ``pg_stat_activity``.

The channel is named after the storage's table (``cacheme_bus_<table>``): the
processes that share a cache table share its bus, and the caches of other
tables in the same database do not hear each other's invalidations.

A listening connection that is closed (``pg_terminate_backend``, a server
restart, a reset) is noticed at once through asyncpg's termination listener;
one that goes silent (a server or network that swallows the bytes) is noticed
by a ``SELECT 1`` every ``HEARTBEAT`` seconds, which must be answered within
``HEARTBEAT`` seconds: a loss is seen within about ``2 * HEARTBEAT``.

PostgreSQL refuses a NOTIFY payload of 8000 bytes or more and takes text
only: ``max_payload`` is 7999 (the core's payloads are ASCII JSON, so bytes
and characters are the same count in any database encoding).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from cacheme.bus import Bus
from cacheme.storage import BaseStorage
from cacheme_sql.postgresql import PostgreSQLStorage

__all__ = [
    "APPLICATION_NAME",
    "CHANNEL_PREFIX",
    "HEARTBEAT",
    "MAX_NOTIFY_PAYLOAD",
    "PostgreSQLBus",
    "channel_for",
]

CHANNEL_PREFIX = "cacheme_bus_"
APPLICATION_NAME = "cacheme-bus"
HEARTBEAT = 1.0
# PostgreSQL's limit (of its default build): a NOTIFY payload must be shorter than 8000 bytes.
MAX_NOTIFY_PAYLOAD = 7999

_SQL_NOTIFY = "SELECT pg_notify($1, $2)"


def channel_for(table: str) -> str:
    """The channel of a cache table's bus (at most 60 characters: tables have at most 48)."""
    return f"{CHANNEL_PREFIX}{table}"


class PostgreSQLBus(Bus):
    """Invalidations over LISTEN/NOTIFY, for local storages with ``bus=`` a PostgreSQL storage's name."""

    max_payload = MAX_NOTIFY_PAYLOAD
    # How the listening connection is named in pg_stat_activity.
    application_name = APPLICATION_NAME

    def __init__(self, storage: BaseStorage) -> None:
        if not isinstance(storage, PostgreSQLStorage):
            raise TypeError(f"{type(self).__name__} needs a PostgreSQLStorage, got {storage!r}")
        self.storage = storage
        self.channel = channel_for(storage.table)

    async def publish(self, payload: bytes) -> None:
        """NOTIFY on a connection of the calling loop's pool; once more, on the new pool, when the
        storage dropped its pool meanwhile (its breaker opened while this waited for a connection).

        The first NOTIFY may have gone out before it failed (asyncpg can lose track of a connection
        of a pool being closed): a payload may then arrive twice, which drops its keys twice.
        """
        text = payload.decode("ascii")
        pools = self.storage._pools
        for last in (False, True):
            used = pools.current()
            try:
                async with self.storage._acquire() as connection:
                    await connection.execute(_SQL_NOTIFY, self.channel, text)
                return
            except Exception:
                if last or used is None or pools.current() is used:
                    raise

    async def listen(self, subscribed: Callable[[], None], deliver: Callable[[bytes], None]) -> None:
        lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failure: list[BaseException] = []

        def end(error: BaseException) -> None:
            if not lost.done():
                failure.append(error)
                lost.set_result(None)

        def on_notification(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
            if lost.done():
                return  # after the loss: the bound storages are emptied (again at the next subscription)
            try:
                deliver(payload.encode())
            except Exception as error:  # the local tiers may now hold what was invalidated
                end(error)

        def on_termination(_connection: Any) -> None:
            end(ConnectionError("postgresql bus: the listening connection was closed"))

        connection = await self._connect()
        try:
            connection.add_termination_listener(on_termination)
            await connection.add_listener(self.channel, on_notification)
            subscribed()
            await _watch(connection, lost, failure)
        except BaseException as error:
            end(error)  # nothing is delivered any more
            # Cut, never closed gracefully: a heartbeat cancelled under a silent server leaves asyncpg
            # a cancel request to send, which a graceful close waits for (60 s with asyncpg 0.29).
            connection.terminate()
            raise

    async def _connect(self) -> Any:
        """The listening connection: the storage's URL and driver options, named ``application_name``."""
        storage = self.storage
        options: dict[str, Any] = dict(storage._driver_options)
        options["server_settings"] = {
            **(options.get("server_settings") or {}),
            "application_name": self.application_name,
        }
        options["timeout"] = storage.connect_timeout
        options["command_timeout"] = HEARTBEAT * 2  # bounds LISTEN, and asyncpg's cancel requests
        return await asyncio.wait_for(asyncpg.connect(storage.url, **options), storage.connect_timeout * 2)


async def _watch(connection: Any, lost: asyncio.Future[None], failure: list[BaseException]) -> None:
    """Never return: raise when the connection is closed, or when a SELECT 1 goes unanswered."""
    while True:
        await asyncio.wait({lost}, timeout=HEARTBEAT)
        if failure:
            raise failure[0]
        try:
            await connection.execute("SELECT 1", timeout=HEARTBEAT)
        except asyncio.TimeoutError as error:
            raise ConnectionError(f"postgresql bus: no answer to SELECT 1 within {HEARTBEAT:g} s") from error
        if failure:  # closed while the SELECT ran (its answer read just before the close)
            raise failure[0]
