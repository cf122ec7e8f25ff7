"""``RedisBus``: cacheme's invalidation bus over Redis pub/sub (a server or a cluster).

Announcements are PUBLISHed on the channel ``cacheme:bus`` through the
storage's own client (so on the calling event loop's connections, under its
pool). Each process subscribes on a connection of its own, made in
cacheme's bus thread: on a cluster, to the first node that answers among the
URL's and the ones the storage has seen (a cluster delivers every PUBLISH to
the subscribers of every node). A connection that is reset raises; one that
goes silent is found by a PING after ``HEARTBEAT`` seconds without traffic,
unanswered within ``HEARTBEAT`` more.

Pub/sub rather than server-assisted client tracking: tracking tells a
connection about the keys *that connection* read, so each process would have
to read every key through its tracking connection, and on a cluster keep one
per node; a channel is one subscription per process, and it carries
invalidations for keys no one has read yet as well as the ones ``refresh``
rewrites.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis

from cacheme.bus import Bus
from cacheme.storage import BaseStorage
from cacheme_redis.storage import RedisStorage

__all__ = ["CHANNEL", "HEARTBEAT", "RedisBus"]

CHANNEL = "cacheme:bus"
HEARTBEAT = 1.0
# Driver options that also make sense for the subscriber's plain connection (a cluster's
# storage may carry options of redis-py's cluster client, which a plain client refuses).
_SUBSCRIBER_OPTIONS = ("socket_connect_timeout", "ssl", "username", "password", "client_name")


class RedisBus(Bus):
    """Invalidations over Redis pub/sub, for local storages with ``bus=`` a Redis storage's name."""

    max_payload = 512 * 1024
    channel = CHANNEL

    def __init__(self, storage: BaseStorage) -> None:
        if not isinstance(storage, RedisStorage):
            raise TypeError(f"{type(self).__name__} needs a RedisStorage, got {storage!r}")
        self.storage = storage

    async def publish(self, payload: bytes) -> None:
        await (await self.storage._state()).commands.publish(self.channel, payload)

    async def listen(self, subscribed: Callable[[], None], deliver: Callable[[bytes], None]) -> None:
        client = await self._subscriber()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            confirmed = await pubsub.get_message(timeout=HEARTBEAT * 2)
            if confirmed is None or confirmed.get("type") != "subscribe":
                raise ConnectionError(
                    f"redis bus: no confirmation of SUBSCRIBE {self.channel} ({confirmed!r})"
                )
            subscribed()
            await self._receive(pubsub, deliver)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    async def _receive(self, pubsub: Any, deliver: Callable[[bytes], None]) -> None:
        """Deliver messages until the connection fails or a PING goes unanswered."""
        pinged_at: float | None = None
        while True:
            message = await pubsub.get_message(timeout=HEARTBEAT)
            now = time.monotonic()
            if message is None:
                if pinged_at is None:
                    await pubsub.ping()
                    pinged_at = now
                elif now - pinged_at >= HEARTBEAT:
                    raise ConnectionError(f"redis bus: no answer to PING within {HEARTBEAT:g} s")
                continue
            pinged_at = None
            if message.get("type") == "message":
                deliver(message["data"])

    async def _subscriber(self) -> Redis:
        """A plain connection for SUBSCRIBE: to the URL's server, or the first cluster node that answers."""
        settings = self.storage.settings
        options = {k: v for k, v in settings.driver_options.items() if k.startswith(_SUBSCRIBER_OPTIONS)}
        options["socket_connect_timeout"] = options.get("socket_connect_timeout", 2.0)
        if not settings.cluster:
            client = Redis.from_url(settings.url, **options)
            await client.ping()
            return client
        parts = urlsplit(settings.url)
        candidates = [(parts.hostname or "127.0.0.1", parts.port or 6379), *settings.cluster_nodes]
        failure: Exception = ConnectionError("redis bus: no cluster node to subscribe on")
        for host, port in dict.fromkeys(candidates):
            credentials = parts.netloc.rpartition("@")[0]
            netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
            client = Redis.from_url(urlunsplit(parts._replace(netloc=netloc, path="")), **options)
            try:
                await client.ping()
                return client
            except Exception as error:
                failure = error
                await client.aclose()
        raise failure

    async def close(self) -> None:
        return None
