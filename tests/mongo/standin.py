"""TEST STAND-IN for a MongoDB server — not MongoDB, and not part of cacheme.

No MongoDB server can be installed on the machines this project is built on,
so the tests talk to this instead: a real MongoDB *wire-protocol* server on a
loopback port (``mockupdb``, MongoDB's own wire-protocol test server library)
whose commands are executed by ``mongomock`` (an in-memory imitation of
MongoDB's query language). PyMongo's ``AsyncMongoClient`` connects to it over
TCP exactly as to a real server: handshake, connection pool, OP_MSG commands
(with their document sequences), cursors, sessions.

It answers the commands cacheme's storage and tests send: hello/isMaster,
ping, buildInfo, find, getMore, killCursors, insert, update, delete,
createIndexes, listIndexes, drop, dropDatabase, endSessions. Anything else is
answered with a CommandNotFound error, like a server would.

What it does NOT imitate (see the report in cacheme-mongo/README.md):
the TTL monitor never runs (TTL indexes are recorded, never acted on — like a
real server between two monitor passes); index key size limits are not
enforced; no authentication, TLS, compression, replica sets or retryable
writes; query plans and performance are nothing like the server's.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import bson
import mockupdb
import mongomock

__all__ = ["MongoStandIn"]

MAX_BSON_OBJECT_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
MAX_WRITE_BATCH_SIZE = 100_000
DEFAULT_BATCH_SIZE = 101
# Wire version of MongoDB 7.0; PyMongo 4.20 needs at least 9 (MongoDB 4.4).
MAX_WIRE_VERSION = 21

Handler = Callable[[str, dict[str, Any]], dict[str, Any]]


class CommandError(Exception):
    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.name = name


class MongoStandIn:
    """A wire-protocol MongoDB imitation on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self._server = mockupdb.MockupDB(port=None, request_timeout=int(1e6))
        self._store: Any = mongomock.MongoClient()
        # TTL indexes are kept here, not given to mongomock (which would expire documents on
        # every read: a real server only deletes them when its TTL monitor passes).
        self._ttl_indexes: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._cursors: dict[int, tuple[str, list[dict[str, Any]]]] = {}
        self._cursor_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self._lock = threading.Lock()
        self.commands_seen: dict[str, int] = {}
        self._handlers: dict[str, Handler] = {
            "hello": self._hello,
            "ismaster": self._hello,
            "ping": self._ok,
            "endsessions": self._ok,
            "buildinfo": self._build_info,
            "find": self._find,
            "getmore": self._get_more,
            "killcursors": self._kill_cursors,
            "insert": self._insert,
            "update": self._update,
            "delete": self._delete,
            "createindexes": self._create_indexes,
            "listindexes": self._list_indexes,
            "drop": self._drop,
            "dropdatabase": self._drop_database,
        }
        self.port = 0

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        self._server.autoresponds(self._respond)
        self.port = self._server.run()

    def stop(self) -> None:
        self._server.stop()

    # -- dispatch -------------------------------------------------------------------------

    def _respond(self, request: Any) -> bool:
        command = dict(request.doc)
        name = next(iter(command), "")
        database = command.get("$db") or request.namespace or "admin"
        handler = self._handlers.get(name.lower())
        with self._lock:
            self.commands_seen[name] = self.commands_seen.get(name, 0) + 1
        try:
            if handler is None:
                raise CommandError(59, "CommandNotFound", f"no such command: '{name}'")
            with self._lock:
                reply = handler(database, command)
        except CommandError as error:
            reply = {"ok": 0, "errmsg": str(error), "code": error.code, "codeName": error.name}
        except Exception as error:  # a stand-in bug must reach the client, never kill the thread
            reply = {"ok": 0, "errmsg": f"stand-in failed: {error!r}", "code": 1, "codeName": "InternalError"}
        reply.setdefault("ok", 1)
        # OSError: the client hung up (it timed out or closed), nothing to answer.
        with contextlib.suppress(OSError):
            request.replies(reply)
        return True

    # -- commands --------------------------------------------------------------------------

    def _ok(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        return {"ok": 1}

    def _hello(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        return {
            "helloOk": True,
            "isWritablePrimary": True,
            "ismaster": True,
            "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
            "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH_SIZE,
            "localTime": datetime.now(timezone.utc),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": next(self._connection_ids),
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
        }

    def _build_info(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": "7.0.0-standin",
            "versionArray": [7, 0, 0, 0],
            "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE,
        }

    def _collection(self, database: str, name: Any) -> Any:
        if not isinstance(name, str) or not name:
            raise CommandError(73, "InvalidNamespace", f"invalid collection name {name!r}")
        return self._store[database][name]

    def _find(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(database, command["find"])
        cursor = collection.find(command.get("filter") or {}, command.get("projection") or None)
        if command.get("sort"):
            cursor = cursor.sort(list(command["sort"].items()))
        if command.get("skip"):
            cursor = cursor.skip(int(command["skip"]))
        if command.get("limit"):
            cursor = cursor.limit(abs(int(command["limit"])))
        documents = list(cursor)
        namespace = f"{database}.{command['find']}"
        batch_size = int(command.get("batchSize") or DEFAULT_BATCH_SIZE)
        first, cursor_id = self._batch(namespace, documents, batch_size, bool(command.get("singleBatch")))
        return {"cursor": {"id": bson.Int64(cursor_id), "ns": namespace, "firstBatch": first}}

    def _get_more(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        cursor_id = int(command["getMore"])
        if cursor_id not in self._cursors:
            raise CommandError(43, "CursorNotFound", f"cursor id {cursor_id} not found")
        namespace, documents = self._cursors.pop(cursor_id)
        batch_size = int(command.get("batchSize") or len(documents) or 1)
        batch, next_id = self._batch(namespace, documents, batch_size, False, cursor_id)
        return {"cursor": {"id": bson.Int64(next_id), "ns": namespace, "nextBatch": batch}}

    def _batch(
        self,
        namespace: str,
        documents: list[dict[str, Any]],
        batch_size: int,
        single: bool,
        cursor_id: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Up to batch_size documents and at most 16 MiB, like a server's reply; the rest stays open."""
        batch: list[dict[str, Any]] = []
        size = 0
        for document in documents:
            document_size = len(bson.encode(document))
            if len(batch) >= batch_size or (batch and size + document_size > MAX_BSON_OBJECT_SIZE):
                break
            batch.append(document)
            size += document_size
        rest = documents[len(batch) :]
        if not rest or single:
            return batch, 0
        cursor_id = cursor_id or next(self._cursor_ids)
        self._cursors[cursor_id] = (namespace, rest)
        return batch, cursor_id

    def _kill_cursors(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        killed = [
            cursor_id for cursor_id in command.get("cursors", []) if self._cursors.pop(int(cursor_id), None)
        ]
        return {"cursorsKilled": killed, "cursorsNotFound": [], "cursorsAlive": [], "cursorsUnknown": []}

    def _writes(
        self, operations: list[dict[str, Any]], ordered: bool, apply: Callable[[dict[str, Any]], None]
    ) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        for index, operation in enumerate(operations):
            try:
                apply(operation)
            except mongomock.OperationFailure as error:
                errors.append({"index": index, "code": error.code or 2, "errmsg": str(error)})
                if ordered:
                    break
        return errors

    def _insert(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(database, command["insert"])
        inserted = 0

        def apply(document: dict[str, Any]) -> None:
            nonlocal inserted
            collection.insert_one(document)
            inserted += 1

        errors = self._writes(command.get("documents", []), command.get("ordered", True), apply)
        return {"n": inserted, **({"writeErrors": errors} if errors else {})}

    def _update(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(database, command["update"])
        matched = modified = 0
        upserted: list[dict[str, Any]] = []
        position = 0

        def apply(statement: dict[str, Any]) -> None:
            nonlocal matched, modified, position
            method = collection.update_many if statement.get("multi") else collection.update_one
            result = method(statement["q"], statement["u"], upsert=bool(statement.get("upsert")))
            if result.upserted_id is not None:
                upserted.append({"index": position, "_id": result.upserted_id})
            else:
                matched += result.matched_count
                modified += result.modified_count
            position += 1

        statements = command.get("updates", [])
        errors = self._writes(statements, command.get("ordered", True), apply)
        reply: dict[str, Any] = {"n": matched + len(upserted), "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _delete(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(database, command["delete"])
        deleted = 0

        def apply(statement: dict[str, Any]) -> None:
            nonlocal deleted
            method = collection.delete_one if statement.get("limit") == 1 else collection.delete_many
            deleted += method(statement["q"]).deleted_count

        errors = self._writes(command.get("deletes", []), command.get("ordered", True), apply)
        return {"n": deleted, **({"writeErrors": errors} if errors else {})}

    def _create_indexes(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        name = command["createIndexes"]
        collection = self._collection(database, name)
        ttl_indexes = self._ttl_indexes.setdefault((database, name), {})
        before = len(collection.index_information()) + len(ttl_indexes)
        for spec in command.get("indexes", []):
            keys = list(spec["key"].items())
            options = {k: v for k, v in spec.items() if k not in ("key", "name")}
            if "expireAfterSeconds" in options:
                existing = ttl_indexes.get(spec["name"])
                if existing is not None and existing != dict(spec):
                    raise CommandError(
                        85, "IndexOptionsConflict", f"An existing index has the same name as {spec['name']}"
                    )
                ttl_indexes[spec["name"]] = dict(spec)
                continue
            collection.create_index(keys, name=spec["name"], **options)
        after = len(collection.index_information()) + len(ttl_indexes)
        return {
            "numIndexesBefore": before,
            "numIndexesAfter": after,
            "createdCollectionAutomatically": before == 0,
        }

    def _list_indexes(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        name = command["listIndexes"]
        collection = self._collection(database, name)
        indexes: list[dict[str, Any]] = []
        for index_name, info in collection.index_information().items():
            spec: dict[str, Any] = {"v": 2, "key": dict(info["key"]), "name": index_name}
            spec.update({k: v for k, v in info.items() if k not in ("key", "v")})
            indexes.append(spec)
        indexes.extend({"v": 2, **spec} for spec in self._ttl_indexes.get((database, name), {}).values())
        return {"cursor": {"id": bson.Int64(0), "ns": f"{database}.{name}", "firstBatch": indexes}}

    def _drop(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        self._store[database].drop_collection(command["drop"])
        self._ttl_indexes.pop((database, command["drop"]), None)
        return {"ok": 1}

    def _drop_database(self, database: str, command: dict[str, Any]) -> dict[str, Any]:
        self._store.drop_database(database)
        for key in [key for key in self._ttl_indexes if key[0] == database]:
            del self._ttl_indexes[key]
        return {"ok": 1}
