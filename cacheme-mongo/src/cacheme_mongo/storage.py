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

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo
import pymongo.common
import pymongo.errors
import pymongo.uri_parser
from pymongo import AsyncMongoClient, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from cacheme.errors import CachemeError, StorageConfigError
from cacheme.storage import BaseStorage

__all__ = ["MongoStorage", "MongoUnavailableError"]

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
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._collection: AsyncCollection[dict[str, Any]] | None = None

    def __repr__(self) -> str:
        # The url may hold a password: show the hosts only.
        return (
            f"MongoStorage(hosts={self.hosts!r}, database={self.database!r}, collection={self.collection!r})"
        )

    async def connect(self) -> None:
        if self._client is not None:
            return
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
        collection = client[self.database][self.collection]
        try:
            with pymongo.timeout(self.connect_timeout):
                await client.admin.command("ping")
            await collection.create_index(
                [(EXPIRE_FIELD, pymongo.ASCENDING)], name=TTL_INDEX_NAME, expireAfterSeconds=0
            )
        except pymongo.errors.OperationFailure as error:
            await client.close()
            if error.code in (85, 86):  # IndexOptionsConflict, IndexKeySpecsConflict
                raise StorageConfigError(
                    f"collection {self.database}.{self.collection} already has an index that conflicts with "
                    f"cacheme's TTL index {TTL_INDEX_NAME!r} on {EXPIRE_FIELD!r}: {error}"
                ) from error
            raise
        except pymongo.errors.PyMongoError as error:
            await client.close()
            raise MongoUnavailableError(
                f"MongoDB at {self.hosts} could not be reached within {self.connect_timeout:g} s: {error}"
            ) from error
        except BaseException:
            await client.close()
            raise
        self._client = client
        self._collection = collection

    async def close(self) -> None:
        client, self._client, self._collection = self._client, None, None
        if client is not None:
            await client.close()

    def _coll(self) -> AsyncCollection[dict[str, Any]]:
        if self._collection is None:
            raise RuntimeError(f"{self!r} is not connected: register it with cacheme.register_storage first")
        return self._collection

    async def get(self, key: str) -> bytes | None:
        document = await self._coll().find_one(
            {"_id": key, **_not_expired(datetime.now(timezone.utc))}, {VALUE_FIELD: True}
        )
        return None if document is None else _value_of(document)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        collection = self._coll()
        found: dict[str, bytes] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            query = {"_id": {"$in": chunk}, **_not_expired(datetime.now(timezone.utc))}
            # batch_size: the whole answer in the first reply when it fits in 16 MiB.
            cursor = collection.find(query, {VALUE_FIELD: True}, batch_size=len(chunk))
            async for document in cursor:
                found[document["_id"]] = _value_of(document)
        return found

    async def set(self, key: str, value: bytes, ttl: timedelta | None) -> None:
        await self._coll().update_one({"_id": key}, _update(value, ttl), upsert=True)

    async def set_many(self, items: Mapping[str, bytes], ttl: timedelta | None) -> None:
        if not items:
            return
        requests = [UpdateOne({"_id": key}, _update(value, ttl), upsert=True) for key, value in items.items()]
        await self._coll().bulk_write(requests, ordered=False)

    async def delete(self, key: str) -> None:
        await self._coll().delete_one({"_id": key})

    async def delete_many(self, keys: Sequence[str]) -> None:
        collection = self._coll()
        for chunk in _chunks(list(dict.fromkeys(keys))):
            await collection.delete_many({"_id": {"$in": chunk}})


def _not_expired(now: datetime) -> dict[str, Any]:
    """The filter that leaves out documents whose expiry has passed (no expiry: kept)."""
    return {"$or": [{EXPIRE_FIELD: None}, {EXPIRE_FIELD: {"$gt": now}}]}


def _update(value: bytes, ttl: timedelta | None) -> dict[str, Any]:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"MongoStorage stores bytes, got {type(value).__name__}")
    if ttl is None:
        return {"$set": {VALUE_FIELD: bytes(value)}, "$unset": {EXPIRE_FIELD: ""}}
    return {"$set": {VALUE_FIELD: bytes(value), EXPIRE_FIELD: datetime.now(timezone.utc) + ttl}}


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
