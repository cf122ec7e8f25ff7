"""MongoStorage itself: options, documents, indexes, expiry, batching, connection failures.

Runs against the stand-in (tests/mongo/standin.py) unless CACHEME_TEST_MONGO_URL names a real server.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pymongo
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient, monitoring

import cacheme
from cacheme.errors import StorageConfigError
from cacheme_mongo.storage import (
    EXPIRE_FIELD,
    TTL_INDEX_NAME,
    VALUE_FIELD,
    MongoStorage,
    MongoUnavailableError,
)


class CommandLog(monitoring.CommandListener):
    """Every command the client sends, by name (PyMongo's own command monitoring)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def data_commands(self) -> list[str]:
        return [name for name in self.names if name not in ("ping", "createIndexes", "endSessions")]


@pytest_asyncio.fixture
async def raw(mongo_url: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """A plain PyMongo client on the same server, to look at the documents behind the storage."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=5000, timeoutMS=10000, tz_aware=True
    )
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def storage(mongo_url: str, mongo_database: str) -> AsyncIterator[MongoStorage]:
    built = MongoStorage(mongo_url, database=mongo_database, collection="cache")
    await built.connect()
    try:
        yield built
    finally:
        await built.close()


def closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- options ----------------------------------------------------------------------------------


def test_served_schemes_build_a_mongo_storage_without_io() -> None:
    # Nothing listens on this port: constructing must not connect.
    port = closed_loopback_port()
    built = cacheme.Storage(f"mongodb://127.0.0.1:{port}", database="db", collection="c")
    assert isinstance(built, MongoStorage)
    assert (built.database, built.collection, built.pool_size) == ("db", "c", 50)
    assert built.hosts == f"127.0.0.1:{port}"
    # An SRV url is not resolved before connect() either.
    srv = cacheme.Storage("mongodb+srv://user:secret@cluster0.example.invalid/app")
    assert isinstance(srv, MongoStorage)
    assert srv.database == "app" and srv.collection == "cacheme"
    assert "secret" not in repr(srv)


@pytest.mark.parametrize(
    "options",
    [
        {"database": "bad name"},
        {"database": "a.b"},
        {"database": "$admin"},
        {"database": "x" * 64},
        {"database": "ok", "collection": "system.users"},
        {"database": "ok", "collection": "1starts-with-digit"},
        {"database": "ok", "collection": "semi;colon"},
        {"database": "ok", "collection": ""},
        {"database": "ok", "collection": 5},
    ],
)
def test_database_and_collection_must_be_plain_names(options: dict[str, Any]) -> None:
    with pytest.raises(StorageConfigError, match="plain name"):
        MongoStorage("mongodb://127.0.0.1:27017", **options)


def test_database_comes_from_the_option_or_the_url() -> None:
    assert MongoStorage("mongodb://127.0.0.1:27017/from_url").database == "from_url"
    assert MongoStorage("mongodb://127.0.0.1:27017/from_url", database="opt").database == "opt"
    with pytest.raises(StorageConfigError, match="needs a database"):
        MongoStorage("mongodb://127.0.0.1:27017")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": True}, "pool_size"),
        ({"pool_size": "10"}, "pool_size"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"connect_timeout": float("inf")}, "connect_timeout"),
        ({"connect_timeout": "5"}, "connect_timeout"),
        ({"timeout": -1}, "timeout"),
        ({"no_such_option": 1}, "unknown option 'no_such_option'"),
        ({"maxPoolSize": 10}, "pool_size"),
        ({"serverSelectionTimeoutMS": 10}, "connect_timeout"),
        ({"maxIdleTimeMS": "soon"}, "maxIdleTimeMS"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(StorageConfigError, match=message):
        MongoStorage("mongodb://127.0.0.1:27017/db", **options)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1", "mongodb://", "mongodb://host:notaport/db", "mongodb+srv://host:27017/db"],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(StorageConfigError):
        MongoStorage(url, database="db")


def test_timeouts_take_timedeltas_and_driver_options_pass() -> None:
    built = MongoStorage(
        "mongodb://127.0.0.1:27017/db",
        connect_timeout=timedelta(milliseconds=1500),
        timeout=2,
        maxIdleTimeMS=1000,
    )
    assert built.connect_timeout == 1.5 and built.timeout == 2.0
    assert built.client_options == {"maxIdleTimeMS": 1000}


# -- documents and indexes -------------------------------------------------------------------


async def test_documents_hold_key_binary_value_and_expiry(
    storage: MongoStorage, raw: AsyncMongoClient[dict[str, Any]], mongo_database: str
) -> None:
    before = datetime.now(timezone.utc)
    await storage.set("with-ttl", b"\x00\x01", timedelta(seconds=30))
    await storage.set("forever", b"f", None)
    documents = {d["_id"]: d async for d in raw[mongo_database]["cache"].find({})}
    assert set(documents) == {"with-ttl", "forever"}
    assert documents["with-ttl"][VALUE_FIELD] == b"\x00\x01"
    expire_at = documents["with-ttl"][EXPIRE_FIELD]
    assert before + timedelta(seconds=29) < expire_at <= datetime.now(timezone.utc) + timedelta(seconds=30)
    assert EXPIRE_FIELD not in documents["forever"]
    # Overwriting without a ttl removes the expiry.
    await storage.set_many({"with-ttl": b"now-forever"}, None)
    document = await raw[mongo_database]["cache"].find_one({"_id": "with-ttl"})
    assert document is not None and EXPIRE_FIELD not in document
    assert document[VALUE_FIELD] == b"now-forever"


async def test_connect_creates_the_ttl_index_idempotently(
    mongo_url: str, mongo_database: str, raw: AsyncMongoClient[dict[str, Any]]
) -> None:
    first = MongoStorage(mongo_url, database=mongo_database, collection="cache")
    second = MongoStorage(mongo_url, database=mongo_database, collection="cache")
    await first.connect()
    await first.set("k", b"v", None)
    await second.connect()  # the indexes exist already: no error, nothing duplicated
    await first.connect()  # connecting a connected storage again is a no-op
    try:
        indexes = {index["name"]: index async for index in await raw[mongo_database]["cache"].list_indexes()}
        assert set(indexes) == {"_id_", TTL_INDEX_NAME}
        assert dict(indexes[TTL_INDEX_NAME]["key"]) == {EXPIRE_FIELD: 1}
        assert indexes[TTL_INDEX_NAME]["expireAfterSeconds"] == 0
        assert dict(indexes["_id_"]["key"]) == {"_id": 1}
        assert await second.get("k") == b"v"
    finally:
        await first.close()
        await second.close()


async def test_a_conflicting_index_is_a_clear_error(
    mongo_url: str, mongo_database: str, raw: AsyncMongoClient[dict[str, Any]]
) -> None:
    await raw[mongo_database]["cache"].create_index(
        [(EXPIRE_FIELD, 1)], name=TTL_INDEX_NAME, expireAfterSeconds=3600
    )
    storage = MongoStorage(mongo_url, database=mongo_database, collection="cache")
    with pytest.raises(StorageConfigError, match="conflicts with cacheme's TTL index"):
        await storage.connect()
    await storage.close()


async def test_expired_documents_are_not_returned_before_any_ttl_monitor(
    storage: MongoStorage, raw: AsyncMongoClient[dict[str, Any]], mongo_database: str
) -> None:
    collection = raw[mongo_database]["cache"]
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    await collection.insert_many(
        [
            {"_id": "expired", VALUE_FIELD: b"old", EXPIRE_FIELD: past},
            {"_id": "fresh", VALUE_FIELD: b"new", EXPIRE_FIELD: future},
        ]
    )
    # The document is still in the collection (no TTL monitor pass has removed it) ...
    assert await collection.find_one({"_id": "expired"}) is not None
    # ... but the storage does not return it.
    assert await storage.get("expired") is None
    assert await storage.get_many(["expired", "fresh"]) == {"fresh": b"new"}
    assert await storage.get("fresh") == b"new"


async def test_a_document_cacheme_did_not_write_is_an_error_not_a_value(
    storage: MongoStorage, raw: AsyncMongoClient[dict[str, Any]], mongo_database: str
) -> None:
    await raw[mongo_database]["cache"].insert_one({"_id": "foreign", VALUE_FIELD: "a string"})
    with pytest.raises(ValueError, match="not written by cacheme"):
        await storage.get("foreign")
    with pytest.raises(ValueError, match="not written by cacheme"):
        await storage.get_many(["foreign"])


async def test_storage_refuses_values_that_are_not_bytes(storage: MongoStorage) -> None:
    with pytest.raises(TypeError, match="stores bytes"):
        await storage.set("k", "text", None)  # type: ignore[arg-type]


async def test_methods_before_connect_say_so(mongo_url: str) -> None:
    storage = MongoStorage(mongo_url, database="never_connected")
    with pytest.raises(RuntimeError, match="not connected"):
        await storage.get("k")


# -- batches ------------------------------------------------------------------------------------


async def test_each_batch_is_one_command(mongo_url: str, mongo_database: str) -> None:
    log = CommandLog()
    # timeout=30: the stand-in executes upserts one by one, slowly; a real server needs far less.
    storage = MongoStorage(
        mongo_url, database=mongo_database, collection="cache", timeout=30, event_listeners=[log]
    )
    await storage.connect()
    try:
        items = {f"key:{i}": str(i).encode() for i in range(600)}  # more than one default cursor batch (101)
        log.names.clear()
        await storage.set_many(items, timedelta(minutes=5))
        assert log.data_commands() == ["update"]
        log.names.clear()
        found = await storage.get_many([*items, "absent"])
        assert found == items
        assert log.data_commands() == ["find"]  # one $in query, answered in its first batch
        log.names.clear()
        await storage.delete_many(list(items))
        assert log.data_commands() == ["delete"]
        assert await storage.get_many(list(items)) == {}
    finally:
        await storage.close()


async def test_batches_of_very_long_keys_are_split_under_the_command_size_limit(
    storage: MongoStorage,
) -> None:
    # 6,000 keys of 3,000 characters: 18 MB of keys, more than one 16 MiB command document can carry.
    keys = [f"{i:06d}" + "k" * 2994 for i in range(6000)]
    stored = {key: key[:6].encode() for key in keys[::600]}
    await storage.set_many(stored, None)
    assert await storage.get_many(keys) == stored
    await storage.delete_many(keys)
    assert await storage.get_many(list(stored)) == {}


async def test_concurrent_upserts_of_the_same_keys_through_a_small_pool(
    mongo_url: str, mongo_database: str
) -> None:
    # 1,000 tasks, 5 on each of 200 keys: concurrent upserts of one _id must neither fail
    # (duplicate key) nor leave two documents; 8 connections serve them all.
    storage = MongoStorage(mongo_url, database=mongo_database, collection="cache", pool_size=8)
    await storage.connect()
    try:

        async def one(i: int) -> bytes | None:
            key = i % 200
            await storage.set(f"c:{key}", str(key).encode(), timedelta(minutes=1))
            return await storage.get(f"c:{key}")

        results = await asyncio.gather(*(one(i) for i in range(1000)))
        assert results == [str(i % 200).encode() for i in range(1000)]
        found = await storage.get_many([f"c:{key}" for key in range(200)])
        assert found == {f"c:{key}": str(key).encode() for key in range(200)}
    finally:
        await storage.close()


# -- unreachable servers -------------------------------------------------------------------------


async def test_registering_an_unreachable_server_fails_in_bounded_time_naming_it() -> None:
    port = closed_loopback_port()
    storage = cacheme.Storage(f"mongodb://127.0.0.1:{port}/db", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(MongoUnavailableError, match=f"127.0.0.1:{port}") as raised:
        # wait_for: a hang fails the test instead of hanging the run.
        await asyncio.wait_for(cacheme.register_storage("mongo-unreachable", storage), 30)
    elapsed = time.monotonic() - started
    assert "within 1 s" in str(raised.value)
    assert elapsed < 10, f"connect took {elapsed:.1f} s with connect_timeout=1"
    assert "mongo-unreachable" not in cacheme.registered_storages()


async def test_a_server_that_accepts_but_never_answers_fails_in_bounded_time() -> None:
    # A listening socket nobody accepts from: the TCP handshake succeeds, the hello is never answered.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        storage = MongoStorage(f"mongodb://127.0.0.1:{port}/db", connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(MongoUnavailableError, match=f"127.0.0.1:{port}"):
            await asyncio.wait_for(storage.connect(), 30)
        assert time.monotonic() - started < 10


async def test_an_operation_on_a_stopped_server_raises_within_the_timeout(private_mongo_standin: Any) -> None:
    storage = MongoStorage(private_mongo_standin.url, database="db", connect_timeout=0.5, timeout=1)
    await storage.connect()
    try:
        await storage.set("k", b"v", None)
        private_mongo_standin.stop()
        with pytest.raises(pymongo.errors.PyMongoError):
            await asyncio.wait_for(storage.get("k"), 30)
        with pytest.raises(pymongo.errors.PyMongoError):
            await asyncio.wait_for(storage.set_many({"a": b"1"}, None), 30)
    finally:
        await storage.close()
