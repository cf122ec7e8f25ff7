"""What the three SQL storages share: options, the table-name check, key hashing, the sweeper.

Each database has its own module with its own SQL; this base only parses the
options every SQL storage accepts and runs the expired-row sweeper, so that
``connect``/``close``/``sweep`` behave the same everywhere.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Generic, TypeVar

from cacheme.batching import Coalescer
from cacheme.errors import StorageConfigError
from cacheme.loops import PerLoop
from cacheme.storage import BaseStorage
from cacheme_sql.ddl import DEFAULT_TABLE

__all__ = ["MAX_TABLE_NAME_LENGTH", "SqlStorage", "check_table_name", "key_hash", "row_value", "rows_by_key"]

logger = logging.getLogger("cacheme.sql")

PoolT = TypeVar("PoolT")

# The longest a pool's close waits for its connections (a program's exit waits for it).
CLOSE_TIMEOUT = 2.0

# 48 leaves room for the "_expire_idx" suffix under PostgreSQL's 63 and MySQL's 64.
MAX_TABLE_NAME_LENGTH = 48
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_table_name(table: object) -> str:
    """``table`` if it is a plain SQL identifier, else a StorageConfigError (no SQL has run)."""
    if not isinstance(table, str):
        raise StorageConfigError(f"table must be a str, got {type(table).__name__}")
    if not _IDENTIFIER.fullmatch(table):
        raise StorageConfigError(
            f"table {table!r} is not a plain identifier: use letters, digits and '_', "
            "not starting with a digit"
        )
    if len(table) > MAX_TABLE_NAME_LENGTH:
        raise StorageConfigError(
            f"table name {table!r} is {len(table)} characters long; at most {MAX_TABLE_NAME_LENGTH} allowed"
        )
    return table


def key_hash(key: str) -> bytes:
    """The fixed-size (32 bytes) unique column: SHA-256 of the UTF-8 key."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def row_value(row: Sequence[Any] | None, key: str) -> bytes | None:
    """The value of a ``(cache_key, value)`` row read by ``key``'s hash, if it really is ``key``'s row."""
    if row is None or row[0] != key:
        return None
    return bytes(row[1])


def rows_by_key(rows: Iterable[Sequence[Any]], wanted: set[str]) -> dict[str, bytes]:
    """``{cache_key: value}`` of the rows read by hash whose full key is one of ``wanted``."""
    return {row[0]: bytes(row[1]) for row in rows if row[0] in wanted}


def _seconds(name: str, value: object, *, allow_none: bool) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise StorageConfigError(f"{name} must be a number of seconds or a timedelta, not None")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise StorageConfigError(
            f"{name} must be a number of seconds or a timedelta, got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise StorageConfigError(f"{name} must be positive, got {value!r}")
    return seconds


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise StorageConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def driver_options(scheme: str, options: dict[str, Any], connect: Callable[..., Any]) -> dict[str, Any]:
    """The leftover ``options`` when every one is a parameter of the driver's ``connect``."""
    accepted = inspect.signature(connect).parameters
    unknown = sorted(name for name in options if name not in accepted)
    if unknown:
        raise StorageConfigError(
            f"unknown option(s) for {scheme}:// storage: {', '.join(unknown)} (cacheme options: table, "
            "pool_size, create_table, sweep_interval, sweep_batch_size, connect_timeout, command_timeout; "
            f"other options must be parameters of {connect.__module__}.{connect.__qualname__})"
        )
    return options


class SqlStorage(BaseStorage, abc.ABC, Generic[PoolT]):
    """Base of the SQL storages. Subclasses write the SQL; this class owns options, pools and sweeping.

    Each event loop gets a pool of its own (``cacheme.loops.PerLoop``), opened on
    its first use in that loop and closed when the loop shuts down or on
    ``close()``; the table is created (or checked) once, by ``connect()``.

    Options shared by every SQL storage:
      table: table name, a plain identifier (default ``cacheme_data``);
      pool_size: connections in the pool;
      create_table: create the table and its index on connect when missing (default True);
      sweep_interval: seconds or timedelta between background sweeps of expired rows; None disables;
      sweep_batch_size: rows deleted per statement by a sweep (default 1000);
      connect_timeout / command_timeout: bounds in seconds for opening a connection / one operation.
    """

    default_pool_size = 10

    def __init__(
        self,
        url: str,
        *,
        table: str = DEFAULT_TABLE,
        pool_size: int | None = None,
        create_table: bool = True,
        sweep_interval: float | timedelta | None = 60.0,
        sweep_batch_size: int = 1000,
        connect_timeout: float | timedelta = 5.0,
        command_timeout: float | timedelta = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(url)
        self.table = check_table_name(table)
        self.pool_size = _positive_int(
            "pool_size", self.default_pool_size if pool_size is None else pool_size
        )
        if not isinstance(create_table, bool):
            raise StorageConfigError(f"create_table must be a bool, got {create_table!r}")
        self.create_table = create_table
        self.sweep_interval = _seconds("sweep_interval", sweep_interval, allow_none=True)
        self.sweep_batch_size = _positive_int("sweep_batch_size", sweep_batch_size)
        self.connect_timeout: float = _seconds("connect_timeout", connect_timeout, allow_none=False) or 0.0
        self.command_timeout: float = _seconds("command_timeout", command_timeout, allow_none=False) or 0.0
        # Closing a pool waits this long for the operations still running, then cuts their connections.
        self.close_timeout = min(self.command_timeout, CLOSE_TIMEOUT)
        self._sweeper: asyncio.Task[None] | None = None
        self._table_ready = False
        self._connected = False  # connect() was called (operations may open pools in any loop)
        self._parse_url(url, options)
        self._pools: PerLoop[PoolT] = PerLoop(
            self._open_for_loop, self._close_for_loop, abandon=self._abandon_pool, name=f"pool of {self!r}"
        )
        # The deletes of one loop turn (a burst of invalidations, say) go out as one delete_many.
        self._deletes: PerLoop[Coalescer[str, None]] = PerLoop(
            self._new_deletes, _drain, name=f"deletes of {self!r}"
        )

    # -- what each database implements -------------------------------------------------------

    @abc.abstractmethod
    def _parse_url(self, url: str, options: dict[str, Any]) -> None:
        """Check the URL and the options left over (driver options); no I/O."""

    @abc.abstractmethod
    async def _open(self) -> PoolT:
        """Open a pool for the running loop (bounded by connect_timeout)."""

    @abc.abstractmethod
    async def _close_pool(self, pool: PoolT) -> None:
        """Close a pool of the running loop (bounded by close_timeout)."""

    def _abandon_pool(self, pool: PoolT) -> None:
        """Release what can be released of a pool whose loop was closed before it (no await possible)."""

    @abc.abstractmethod
    async def _create_table(self) -> None:
        """Run the packaged DDL for ``self.table``; safe when several processes do it at once."""

    @abc.abstractmethod
    async def _check_table(self) -> None:
        """Raise when the table is missing (used with create_table=False)."""

    @abc.abstractmethod
    async def _sweep_batch(self, limit: int) -> int:
        """Delete at most ``limit`` expired rows; return how many were deleted."""

    # -- shared behaviour -----------------------------------------------------------------------

    async def _pool(self) -> PoolT:
        """The running loop's pool, opened on its first use in this loop."""
        pool = self._pools.current()
        if pool is None:
            if not self._connected:
                raise RuntimeError(
                    f"{self!r} is not connected: register it with cacheme.register_storage first"
                )
            pool = await self._pools.get()
        return pool

    async def _open_for_loop(self) -> PoolT:
        pool = await self._open()
        if self._table_ready:
            self._start_sweeper()
        return pool

    async def connect(self) -> None:
        """Open this loop's pool and create (or check) the table; connecting again is a no-op."""
        await self._pools.get()
        if self._table_ready:
            return
        self._connected = True
        try:
            if self.create_table:
                await self._create_table()
            else:
                await self._check_table()
        except BaseException:
            self._connected = False
            await self._pools.close()
            raise
        self._table_ready = True
        self._start_sweeper()

    def _start_sweeper(self) -> None:
        """Sweep in the running loop, unless a sweeper runs already (its loop may have ended since)."""
        if self.sweep_interval is None or (self._sweeper is not None and not self._sweeper.done()):
            return
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_forever(self.sweep_interval), name=f"cacheme-sql sweeper {self.table}"
        )

    async def _new_deletes(self) -> Coalescer[str, None]:
        return Coalescer(asyncio.get_running_loop(), self._delete_batch)

    async def _delete_batch(self, keys: list[str]) -> list[None]:
        await self.delete_many(keys)
        return [None] * len(keys)

    async def delete(self, key: str) -> None:
        """Delete ``key``; the deletes of one loop turn are one statement (``delete_many``)."""
        deletes = self._deletes.current() or await self._deletes.get()
        await deletes.submit(key)

    def drop_connections(self) -> None:
        """This loop's pool is replaced at the next request; the old one is closed in the background."""
        self._pools.discard()

    async def close(self) -> None:
        """Close this event loop's pool (and stop the sweeper if it runs here). The storage may be used
        again after.

        Another running loop's pool (and sweeper) is closed when that loop shuts down.
        """
        await self._deletes.close()
        await self._pools.close()

    async def _close_for_loop(self, pool: PoolT) -> None:
        """Stop the sweeper if it runs in this loop, then close the loop's pool: both end with the loop."""
        sweeper = self._sweeper
        if sweeper is not None and sweeper.get_loop() is asyncio.get_running_loop():
            self._sweeper = None
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await self._close_pool(pool)

    async def sweep(self) -> int:
        """Delete every expired row now, in batches of ``sweep_batch_size``; return how many."""
        total = 0
        while True:
            deleted = await self._sweep_batch(self.sweep_batch_size)
            total += deleted
            if deleted < self.sweep_batch_size:
                return total
            await asyncio.sleep(0)  # let requests run between batches

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                deleted = await self.sweep()
            except Exception:
                # A sweep that fails (database down, table dropped) is retried next interval.
                logger.warning(
                    "cacheme-sql: sweeping %s failed; retrying in %ss", self, interval, exc_info=True
                )
            else:
                if deleted:
                    logger.debug("cacheme-sql: swept %d expired rows from %s", deleted, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._safe_url()!r}, table={self.table!r})"

    def _safe_url(self) -> str:
        """The URL without its password, for logs."""
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", self.url)


async def _drain(deletes: Coalescer[str, None]) -> None:
    await deletes.drain()
