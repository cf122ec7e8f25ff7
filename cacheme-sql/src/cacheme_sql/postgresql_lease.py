"""``PostgreSQLLeases``: cacheme's leases (``Meta.lease``) in a PostgreSQL cache table.

A key's lease is its row holding the mark (``cacheme.lease.MARK`` and a token)
as its value, expiring with the lease: readers take a row whose ``expire`` has
passed for absent, and a mark for a miss. Each operation is one statement over
arrays (``unnest``), run on a connection of the storage's pool for the calling
loop: one round trip for any number of keys, each key handled atomically.

- acquire: ``INSERT ... ON CONFLICT (key_hash) DO UPDATE ... WHERE`` the row
  there has expired, ``RETURNING`` the row. A key with no row, or an expired
  one, gets the mark (answer 0). Of concurrent acquires of one absent key,
  exactly one inserts (or updates) it: the others wait for its row lock, then
  see its mark. A key whose row is live is answered from that row: the time
  its mark has left, or its value.

  The rows a loser reads come from the statement's snapshot, taken when it
  began; a row another process committed since (the winner's, whose lock the
  loser's insert waited for) is not in it. So the conflict's ``WHERE`` also holds when the row
  version the insert met is not the one the snapshot holds (compared by
  ``ctid``): such a row is "updated" to what it already is (a new version,
  same contents) and ``RETURNING`` gives its current contents. This happens
  only under a race: usually no row is written but the marks.
- write: ``UPDATE ... WHERE value = mark AND expire > now()``: the value and
  its expiry, only where the lease still stands; the rows updated are counted.
- release: ``DELETE ... WHERE value = mark``.

An acquire locks its rows in ``key_hash`` order (as ``set_many`` does); a
statement that still dies in a deadlock (against the storage's unordered
deletes, say, or a write or release, whose order the planner picks) is run
once more, as PostgreSQL rolled it back. Expiry is the database clock's
(``now()``, the statement's start), as the storage's; the time a mark has
left is measured when its row is read.

Notices (a lease ended) are sent with ``pg_notify`` on a channel of their own,
``cacheme_lease_<table>``, so that they never mix with the invalidation bus's
payloads, and received as those are (``PostgreSQLBus.listen``: a listening
connection of the leases' own, named ``cacheme-lease``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from cacheme.lease import Leases, is_mark
from cacheme.storage import BaseStorage, capped_ttl
from cacheme_sql.base import key_hash
from cacheme_sql.postgresql import MAX_TTL, _is_deadlock
from cacheme_sql.postgresql_bus import PostgreSQLBus
from cacheme_sql.writes import retry_once_on_deadlock

__all__ = ["LEASE_APPLICATION_NAME", "LEASE_CHANNEL_PREFIX", "PostgreSQLLeases", "lease_channel_for"]

T = TypeVar("T")

LEASE_CHANNEL_PREFIX = "cacheme_lease_"
LEASE_APPLICATION_NAME = "cacheme-lease"


def lease_channel_for(table: str) -> str:
    """The channel of a cache table's lease notices (at most 62 characters: tables have at most 48)."""
    return f"{LEASE_CHANNEL_PREFIX}{table}"


def _acquire_sql(table: str) -> str:
    expired = "c.expire <= now()"

    def unless_expired(column: str) -> str:
        return f"{column} = CASE WHEN {expired} THEN EXCLUDED.{column} ELSE c.{column} END"

    kept = ", ".join(unless_expired(column) for column in ("cache_key", "value", "expire", "updated_at"))
    return (
        # Each key, with the row the statement's snapshot holds for it (if any).
        "WITH wanted AS ("
        "SELECT w.h, w.k, w.m, s.ctid AS seen, s.value, s.expire "
        "FROM unnest($1::bytea[], $2::text[], $3::bytea[]) AS w(h, k, m) "
        f"LEFT JOIN {table} s ON s.key_hash = w.h"
        "), taken AS ("
        f"INSERT INTO {table} AS c (key_hash, cache_key, value, expire, updated_at) "
        "SELECT h, k, m, now() + $4::interval, now() FROM wanted ORDER BY h "
        f"ON CONFLICT (key_hash) DO UPDATE SET {kept} "
        f"WHERE {expired} OR NOT EXISTS (SELECT FROM wanted x WHERE x.h = c.key_hash AND x.seen = c.ctid) "
        "RETURNING c.key_hash, c.value, c.expire"
        ") "
        # The row as it is now: the one written (or met after the snapshot), else the snapshot's; the
        # time it has left, from the moment it is read (now() is when the statement began: a loser's
        # may come before the winner's).
        "SELECT w.h, CASE WHEN t.key_hash IS NULL THEN w.value ELSE t.value END, "
        "ceil(extract(epoch FROM CASE WHEN t.key_hash IS NULL THEN w.expire ELSE t.expire END "
        "- clock_timestamp()) * 1000)::bigint "
        "FROM wanted w LEFT JOIN taken t ON t.key_hash = w.h"
    )


def _interval(ttl_ms: int | None) -> timedelta | None:
    return None if ttl_ms is None else capped_ttl(timedelta(milliseconds=ttl_ms), MAX_TTL)


class PostgreSQLLeases(PostgreSQLBus, Leases):
    """Leases held in the rows of a PostgreSQL storage's table; notices on ``cacheme_lease_<table>``."""

    application_name = LEASE_APPLICATION_NAME

    def __init__(self, storage: BaseStorage) -> None:
        super().__init__(storage)
        table = self.storage.table
        self.channel = lease_channel_for(table)
        self._sql_acquire = _acquire_sql(table)
        self._sql_write = (
            f"UPDATE {table} AS c SET value = w.v, expire = now() + w.t, updated_at = now() "
            "FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::interval[]) AS w(h, m, v, t) "
            "WHERE c.key_hash = w.h AND c.value = w.m AND c.expire > now()"
        )
        self._sql_release = (
            f"DELETE FROM {table} AS c USING unnest($1::bytea[], $2::bytea[]) AS w(h, m) "
            "WHERE c.key_hash = w.h AND c.value = w.m"
        )

    async def acquire(self, marks: Mapping[str, bytes], ttl_ms: int) -> list[bytes | int]:
        if not marks:
            return []
        keys = list(marks)
        hashes = [key_hash(key) for key in keys]
        tokens = [marks[key] for key in keys]
        lease = _interval(ttl_ms)
        rows = await self._run(
            lambda connection: connection.fetch(self._sql_acquire, hashes, keys, tokens, lease)
        )
        now_held = {bytes(row[0]): (bytes(row[1]), row[2]) for row in rows}
        answers: list[bytes | int] = []
        for key, hashed in zip(keys, hashes, strict=True):
            value, left = now_held[hashed]
            if value == marks[key]:
                answers.append(0)  # granted
            elif is_mark(value):  # another's lease (one with no expiry: held for a lease's length)
                answers.append(ttl_ms if left is None else max(1, int(left)))
            else:
                answers.append(value)
        return answers

    async def write(
        self, values: Mapping[str, bytes], marks: Mapping[str, bytes], ttls: Mapping[str, int | None]
    ) -> int:
        if not values:
            return 0
        keys = list(values)
        hashes = [key_hash(key) for key in keys]
        tokens = [marks[key] for key in keys]
        bodies = [values[key] for key in keys]
        # None (never expires) makes now() + NULL: a NULL expire, as the storage writes it.
        lengths = [_interval(ttls[key]) for key in keys]
        status: str = await self._run(
            lambda connection: connection.execute(self._sql_write, hashes, tokens, bodies, lengths)
        )
        return int(status.rsplit(" ", 1)[-1])

    async def release(self, marks: Mapping[str, bytes]) -> None:
        if not marks:
            return
        hashes = [key_hash(key) for key in marks]
        tokens = list(marks.values())
        await self._run(lambda connection: connection.execute(self._sql_release, hashes, tokens))

    async def _run(self, statement: Callable[[Any], Awaitable[T]]) -> T:
        """``statement(connection)`` on a connection of the calling loop's pool; once more when
        PostgreSQL broke a deadlock by rolling it back."""
        answer: list[T] = []

        async def run() -> None:
            async with self.storage._acquire() as connection:
                answer[:] = [await statement(connection)]

        await retry_once_on_deadlock(run, _is_deadlock)
        return answer[0]
