"""``MongoStorage``: cached bytes in a MongoDB collection, through PyMongo's asyncio client.

One document per key::

    {"_id": <key>, "value": <BSON binary>, "expire_at": <UTC datetime>}

``expire_at`` is left out for a value that never expires. The key is the
``_id``, so the unique index on the key is the collection's own ``_id`` index
(which has no index-key size limit on the servers PyMongo 4.13+ supports,
so a key of several thousand characters is fine). ``connect`` creates a TTL
index on ``expire_at`` with ``expireAfterSeconds=0``; the server's TTL monitor
deletes expired documents about once a minute, so every read also filters
them out itself.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import pymongo
import pymongo.common
import pymongo.errors
import pymongo.uri_parser
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from cacheme.batching import Coalescer
from cacheme.errors import CachemeError, StorageConfigError
from cacheme.loops import PerLoop
from cacheme.storage import LATEST_EXPIRY, BaseStorage

__all__ = ["MongoStorage", "MongoUnavailableError"]

T = TypeVar("T")

VALUE_FIELD = "value"
EXPIRE_FIELD = "expire_at"
TTL_INDEX_NAME = "cacheme_expire_at_ttl"

DEFAULT_COLLECTION = "cacheme"
DEFAULT_POOL_SIZE = 50
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 5.0

# Database and collection names: a plain identifier, hyphens allowed. MongoDB
# limits database names to 64 bytes.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MAX_DATABASE_LENGTH = 63
_MAX_COLLECTION_LENGTH = 120

# A `$in` query carries at most this many bytes of keys, far below the 16 MiB
# limit of one command document; larger batches are split.
_KEY_BYTES_PER_QUERY = 4 * 1024 * 1024

# Client options this storage sets itself; each maps to the option to use instead.
_OWN_CLIENT_OPTIONS = {
    "maxpoolsize": "pool_size",
    "serverselectiontimeoutms": "connect_timeout",
    "connecttimeoutms": "connect_timeout",
    "timeoutms": "timeout",
    "document_class": None,
    "tz_aware": None,
    "connect": None,
}


# A write request: values with one ttl (one value for a set); a turn's requests are one bulk_write.
WriteRequest = tuple[Mapping[str, bytes], "timedelta | None"]


class _LoopState:
    """What the storage holds for one event loop: its client, and the writes of the current turn."""

    def __init__(self, client: AsyncMongoClient[dict[str, Any]], database: str, collection: str) -> None:
        self.client = client
        self.collection: AsyncCollection[dict[str, Any]] = client[database][collection]
        self.writes: Coalescer[WriteRequest, None] | None = None

    async def close(self) -> None:
        try:
            if self.writes is not None:
                await self.writes.drain()
        finally:
            await self.client.close()


class MongoUnavailableError(CachemeError, ConnectionError):
    """The MongoDB server could not be reached (or did not answer) when connecting."""


def _seconds(name: str, value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise StorageConfigError(f"MongoStorage option {name} must be seconds or a timedelta, got {value!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise StorageConfigError(f"MongoStorage option {name} must be a positive, finite time, got {value!r}")
    return seconds


def _check_name(kind: str, name: Any, max_length: int) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > max_length:
        raise StorageConfigError(
            f"MongoStorage {kind} name must be a plain name (a letter or '_', then letters, digits, "
            f"'_' or '-', at most {max_length} characters), got {name!r}"
        )
    return name


def _hosts_of(url: str) -> tuple[str, str | None]:
    """The URL's host list as ``host:port,...`` (without credentials) and its database, if any."""
    srv = url.lower().startswith("mongodb+srv://")
    # A mongodb+srv:// URL is parsed as a plain one, so that parsing does no DNS look-up here;
    # the driver resolves it in connect().
    plain = "mongodb://" + url.split("://", 1)[1] if srv else url
    try:
        parsed = pymongo.uri_parser.parse_uri(plain, validate=not srv)
    except (pymongo.errors.InvalidURI, pymongo.errors.ConfigurationError, ValueError) as error:
        raise StorageConfigError(f"malformed MongoDB url: {error}") from None
    nodes = parsed["nodelist"]
    if srv:
        if len(nodes) != 1 or url.split("://", 1)[1].split("/", 1)[0].split("@")[-1].count(":"):
            raise StorageConfigError("a mongodb+srv:// url names exactly one host, without a port")
        hosts = f"{nodes[0][0]} (SRV)"
    else:
        hosts = ",".join(f"{host}:{port}" for host, port in nodes)
    database: str | None = parsed.get("database")
    return hosts, database


class MongoStorage(BaseStorage):
    """Cached bytes in one MongoDB collection.

    Options:

    - ``database``: the database name; defaults to the URL's path (``mongodb://host/<db>``).
    - ``collection``: the collection name, default ``"cacheme"``.
    - ``pool_size``: the most connections the client opens, default 50.
    - ``connect_timeout``: seconds (or a timedelta) to find and reach the server, default 5;
      ``connect`` fails with :class:`MongoUnavailableError` naming the host after that.
    - ``timeout``: seconds (or a timedelta) any one operation may take, default 5.
    - any other keyword is a PyMongo client option (``tls=True``, ``replicaSet="rs0"``, ...),
      checked by PyMongo's own validator.
    """

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float | timedelta = DEFAULT_CONNECT_TIMEOUT,
        timeout: float | timedelta = DEFAULT_TIMEOUT,
        **client_options: Any,
    ) -> None:
        super().__init__(url)
        if not isinstance(url, str) or not url.lower().startswith(("mongodb://", "mongodb+srv://")):
            raise StorageConfigError(f"MongoStorage needs a mongodb:// or mongodb+srv:// url, got {url!r}")
        self.hosts, url_database = _hosts_of(url)
        if database is None:
            database = url_database
        if database is None:
            raise StorageConfigError(
                "MongoStorage needs a database: pass database='name' or put it in the url "
                "(mongodb://host:27017/name)"
            )
        self.database = _check_name("database", database, _MAX_DATABASE_LENGTH)
        self.collection = _check_name("collection", collection, _MAX_COLLECTION_LENGTH)
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise StorageConfigError(
                f"MongoStorage option pool_size must be a positive int, got {pool_size!r}"
            )
        self.pool_size = pool_size
        self.connect_timeout = _seconds("connect_timeout", connect_timeout, DEFAULT_CONNECT_TIMEOUT)
        self.timeout = _seconds("timeout", timeout, DEFAULT_TIMEOUT)
        for option, value in client_options.items():
            if option.lower() in _OWN_CLIENT_OPTIONS:
                instead = _OWN_CLIENT_OPTIONS[option.lower()]
                advice = f"use the option {instead!r} instead" if instead else "cacheme sets it itself"
                raise StorageConfigError(f"MongoStorage does not take the client option {option!r}: {advice}")
            try:
                pymongo.common.validate(option, value)
            except (pymongo.errors.ConfigurationError, ValueError, TypeError) as error:
                raise StorageConfigError(
                    f"MongoStorage: unknown option {option!r} (it is not one of database, collection, "
                    f"pool_size, connect_timeout, timeout, nor a valid PyMongo client option: {error})"
                ) from None
        self.client_options = dict(client_options)
        # One client per event loop: PyMongo's async client belongs to the loop that made it.
        self._states: PerLoop[_LoopState] = PerLoop(
            self._new_state, _LoopState.close, name=f"client of {self!r}"
        )
        self._ready = False

    def __repr__(self) -> str:
        # The url may hold a password: show the hosts only.
        return (
            f"MongoStorage(hosts={self.hosts!r}, database={self.database!r}, collection={self.collection!r})"
        )

    async def _new_state(self) -> _LoopState:
        """A client for the running loop (no I/O: it connects on its first operation)."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.url,
            maxPoolSize=self.pool_size,
            serverSelectionTimeoutMS=int(self.connect_timeout * 1000),
            connectTimeoutMS=int(self.connect_timeout * 1000),
            timeoutMS=int(self.timeout * 1000),
            tz_aware=True,
            appname="cacheme",
            **self.client_options,
        )
        state = _LoopState(client, self.database, self.collection)
        state.writes = Coalescer(asyncio.get_running_loop(), functools.partial(self._write_batch, state))
        return state

    async def connect(self) -> None:
        """Check that the server answers and create the TTL index; connecting again is a no-op."""
        state = await self._states.get()
        if self._ready:
            return
        try:
            with pymongo.timeout(self.connect_timeout):
                await state.client.admin.command("ping")
            await state.collection.create_index(
                [(EXPIRE_FIELD, pymongo.ASCENDING)], name=TTL_INDEX_NAME, expireAfterSeconds=0
            )
        except pymongo.errors.OperationFailure as error:
            await self._states.close()
            if error.code in (85, 86):  # IndexOptionsConflict, IndexKeySpecsConflict
                raise StorageConfigError(
                    f"collection {self.database}.{self.collection} already has an index that conflicts with "
                    f"cacheme's TTL index {TTL_INDEX_NAME!r} on {EXPIRE_FIELD!r}: {error}"
                ) from error
            raise
        except pymongo.errors.PyMongoError as error:
            await self._states.close()
            raise MongoUnavailableError(
                f"MongoDB at {self.hosts} could not be reached within {self.connect_timeout:g} s: {error}"
            ) from error
        except BaseException:
            await self._states.close()
            raise
        self._ready = True

    def drop_connections(self) -> None:
        """This loop's client is replaced at the next request; the old one is closed in the background."""
        self._states.discard()

    async def close(self) -> None:
        """Send the pending writes and close this event loop's client; the storage may be used again after.

        Another running loop's client is closed when that loop shuts down.
        """
        await self._states.close()

    async def _state(self) -> _LoopState:
        """The running loop's client and write batches."""
        state = self._states.current()
        if state is None:
            if not self._ready:
                raise RuntimeError(
                    f"{self!r} is not connected: register it with cacheme.register_storage first"
                )
            state = await self._states.get()
        return state

    async def _run(self, operation: Callable[[AsyncCollection[dict[str, Any]]], Awaitable[T]]) -> T:
        """``operation(collection)`` through the running loop's client."""
        return await operation((await self._state()).collection)

    async def _write_batch(self, state: _LoopState, requests: list[WriteRequest]) -> list[None]:
        """One loop turn's writes as one unordered ``bulk_write`` (a key written twice: the later wins).

        A write cut off by ``AutoReconnect`` (a connection lost, or one of
        PyMongo's own I/O tasks cancelled, as when a loop shuts down) is sent
        once more: upserts of the same values are idempotent.
        """
        updates: dict[str, dict[str, Any]] = {}
        for items, ttl in requests:
            for key, value in items.items():
                updates[key] = _update(value, ttl)
        operations = [UpdateOne({"_id": key}, update, upsert=True) for key, update in updates.items()]
        try:
            await state.collection.bulk_write(operations, ordered=False)
        except pymongo.errors.AutoReconnect:
            await state.collection.bulk_write(operations, ordered=False)
        except asyncio.CancelledError:
            # PyMongo's own I/O tasks cancelled under it (a loop shutting down cancels every task)
            # can leave its pool waiting for a connection that never comes back: later
            # operations (the write sent once more, say) get a new client.
            self._states.discard(state, close_now=False)  # closing it now could wait on that pool
            raise
        return [None] * len(requests)

    async def get(self, key: str) -> bytes | None:
        async def read(collection: AsyncCollection[dict[str, Any]]) -> dict[str, Any] | None:
            query = {"_id": key, **_not_expired(datetime.now(timezone.utc))}
            return await collection.find_one(query, {VALUE_FIELD: True})

        document = await self._run(read)
        return None if document is None else _value_of(document)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        async def read(collection: AsyncCollection[dict[str, Any]]) -> dict[str, bytes]:
            found: dict[str, bytes] = {}
            for chunk in _chunks(list(dict.fromkeys(keys))):
                query = {"_id": {"$in": chunk}, **_not_expired(datetime.now(timezone.utc))}
                # batch_size: the whole answer in the first reply when it fits in 16 MiB.
                cursor = collection.find(query, {VALUE_FIELD: True}, batch_size=len(chunk))
                async for document in cursor:
                    found[document["_id"]] = _value_of(document)
            return found

        return await self._run(read)

    async def set(self, key: str, value: bytes, ttl: timedelta | None) -> None:
        await self.set_many({key: value}, ttl)

    async def set_many(self, items: Mapping[str, bytes], ttl: timedelta | None) -> None:
        """Queued with the other writes of this loop turn; sent together as one ``bulk_write``."""
        if not items:
            return
        for value in items.values():
            _check_bytes(value)
        writes = (await self._state()).writes
        assert writes is not None
        await writes.submit((items, ttl))

    async def delete(self, key: str) -> None:
        await self.delete_many([key])

    async def delete_many(self, keys: Sequence[str]) -> None:
        async def delete(collection: AsyncCollection[dict[str, Any]]) -> None:
            for chunk in _chunks(list(dict.fromkeys(keys))):
                await collection.delete_many({"_id": {"$in": chunk}})

        await self._run(delete)


def _not_expired(now: datetime) -> dict[str, Any]:
    """The filter that leaves out documents whose expiry has passed (no expiry: kept)."""
    return {"$or": [{EXPIRE_FIELD: None}, {EXPIRE_FIELD: {"$gt": now}}]}


def _update(value: bytes, ttl: timedelta | None) -> dict[str, Any]:
    """The upsert's update document: the value, and its expiry ``ttl`` from now (none for ``None``).

    An expiry past the latest datetime (``cacheme.storage.LATEST_EXPIRY``, the last
    moment of 9999 UTC), as ``timedelta.max`` asks for, is kept as that moment.
    """
    _check_bytes(value)
    if ttl is None:
        return {"$set": {VALUE_FIELD: bytes(value)}, "$unset": {EXPIRE_FIELD: ""}}
    now = datetime.now(timezone.utc)
    expire_at = LATEST_EXPIRY if ttl >= LATEST_EXPIRY - now else now + ttl
    return {"$set": {VALUE_FIELD: bytes(value), EXPIRE_FIELD: expire_at}}


def _check_bytes(value: object) -> None:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"MongoStorage stores bytes, got {type(value).__name__}")


def _value_of(document: Mapping[str, Any]) -> bytes:
    value = document.get(VALUE_FIELD)
    if not isinstance(value, bytes):
        raise ValueError(
            f"cached document {document.get('_id')!r} has no binary {VALUE_FIELD!r} field "
            f"(found {type(value).__name__}): it was not written by cacheme"
        )
    return value


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    """Split keys so that no single `$in` query grows past `_KEY_BYTES_PER_QUERY`."""
    chunk: list[str] = []
    size = 0
    for key in keys:
        key_size = len(key.encode("utf-8", "surrogatepass")) + 16
        if chunk and size + key_size > _KEY_BYTES_PER_QUERY:
            yield chunk
            chunk, size = [], 0
        chunk.append(key)
        size += key_size
    if chunk:
        yield chunk
