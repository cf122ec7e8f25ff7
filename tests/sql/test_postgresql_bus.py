"""``PostgreSQLBus`` in one process: the NOTIFY size limit, payloads split by the core, a listener
whose connection is terminated, blackholed or cancelled.

The bus is driven directly (``publish`` and ``listen`` in the test's loop); tests/fleet/ runs it
between processes through the core.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

import cacheme
from cacheme.bus import decode, encode
from cacheme.plugins import bus_class_for
from cacheme_sql.base import SqlStorage
from cacheme_sql.postgresql_bus import (
    APPLICATION_NAME,
    HEARTBEAT,
    MAX_NOTIFY_PAYLOAD,
    PostgreSQLBus,
    channel_for,
)
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.sql_servers import raw_postgres
from tests.sql.support import Database, database

ROOT = Path(__file__).resolve().parents[2]


class Listener:
    """``bus.listen`` running as a task of the test's loop, with what it delivered."""

    def __init__(self, bus: PostgreSQLBus) -> None:
        self.subscribed = asyncio.Event()
        self.payloads: list[bytes] = []
        self.task = asyncio.create_task(bus.listen(self.subscribed.set, self.payloads.append))

    async def ready(self) -> None:
        await asyncio.wait_for(self.subscribed.wait(), 5)

    async def received(self, count: int, seconds: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + seconds
        while len(self.payloads) < count:
            assert not self.task.done(), self.task
            assert time.monotonic() < deadline, f"{len(self.payloads)} of {count} payloads delivered"
            await asyncio.sleep(0.01)
        return self.payloads

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest_asyncio.fixture
async def pg(tmp_path: Path) -> AsyncIterator[Database]:
    found = database("postgresql", tmp_path)
    yield found
    await found.drop()


@pytest_asyncio.fixture
async def storage(pg: Database) -> AsyncIterator[SqlStorage[Any]]:
    built = pg.storage()
    await built.connect()
    yield built
    await built.close()


@pytest_asyncio.fixture
async def listener(storage: SqlStorage[Any]) -> AsyncIterator[Listener]:
    started = Listener(PostgreSQLBus(storage))
    await started.ready()
    yield started
    await started.stop()


def listener_connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    """Every connection the bus opens to listen (asyncpg.connect; pools do not use it), with its options."""
    opened: list[tuple[Any, dict[str, Any]]] = []
    connect = asyncpg.connect

    @functools.wraps(connect)  # its signature: storages check their options against it
    async def spy(*args: Any, **options: Any) -> Any:
        connection = await connect(*args, **options)
        opened.append((connection, options))
        return connection

    monkeypatch.setattr(asyncpg, "connect", spy)
    return opened


def behind_a_proxy(
    pg: Database, tcp_proxy: Callable[[str, int], TcpProxy]
) -> tuple[SqlStorage[Any], TcpProxy]:
    """A storage of ``pg``'s table whose connections (the bus's too) go through a proxy of the test's."""
    parts = urlsplit(pg.url)
    proxy = tcp_proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    # command_timeout bounds the closing of the pool whose connections went through a blackhole.
    storage = cacheme.Storage(parts._replace(netloc=netloc).geturl(), table=pg.table, command_timeout=0.5)
    assert isinstance(storage, SqlStorage)
    return storage, proxy


async def backend_alive(pid: int) -> bool:
    admin = await raw_postgres()
    try:
        return bool(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid))
    finally:
        await admin.close()


async def raises_within(task: asyncio.Task[None], seconds: float) -> tuple[BaseException, float]:
    started = time.monotonic()
    done, _ = await asyncio.wait({task}, timeout=seconds)
    assert done, f"the listener did not raise within {seconds} s"
    error = task.exception()
    assert error is not None
    return error, time.monotonic() - started


# ---------------------------------------------------------------- the plugin


def test_the_plugin_names_the_bus_for_both_schemes_without_importing_the_driver() -> None:
    code = (
        "import sys, cacheme.plugins as p; "
        "print(sorted(k for k, v in p.bus_schemes().items() if v.startswith('cacheme_sql')), "
        "'asyncpg' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['postgres',", "'postgresql']", "False"]


def test_the_bus_class_of_a_postgresql_storage(pg: Database) -> None:
    assert bus_class_for(pg.storage()) is PostgreSQLBus
    assert bus_class_for(cacheme.Storage(pg.url.replace("postgresql://", "postgres://"), table=pg.table)) is (
        PostgreSQLBus
    )
    with pytest.raises(TypeError, match="needs a PostgreSQLStorage"):
        PostgreSQLBus(cacheme.Storage("local://lru", size=10))


def test_the_channel_is_named_after_the_table(pg: Database) -> None:
    bus = PostgreSQLBus(pg.storage())
    assert bus.channel == channel_for(pg.table) == f"cacheme_bus_{pg.table}"
    assert len(channel_for("t" * 48)) <= 63  # PostgreSQL's longest identifier


# ---------------------------------------------------------------- payloads


async def test_a_payload_of_max_payload_bytes_is_delivered_and_one_byte_more_is_refused_by_the_server(
    storage: SqlStorage[Any], listener: Listener
) -> None:
    bus = PostgreSQLBus(storage)
    assert bus.max_payload == MAX_NOTIFY_PAYLOAD == 7999
    largest = b"x" * bus.max_payload
    await bus.publish(largest)
    assert await listener.received(1) == [largest]
    with pytest.raises(asyncpg.InvalidParameterValueError, match="payload string too long"):
        await bus.publish(largest + b"x")


async def test_announcements_larger_than_a_notify_are_split_by_the_core_and_all_arrive(
    storage: SqlStorage[Any], listener: Listener
) -> None:
    bus = PostgreSQLBus(storage)
    # Non-ASCII keys too: the core escapes them (ASCII JSON), and counts the escaped length.
    keys = [f"item:{i}:{'é日' * (i % 7)}" for i in range(3000)]
    payloads = encode(keys, bus.max_payload)
    assert len(payloads) > 10
    assert all(payload.isascii() and len(payload) <= bus.max_payload for payload in payloads)
    for payload in payloads:
        await bus.publish(payload)
    delivered = await listener.received(len(payloads))
    received: list[str] = []
    for payload in delivered:
        _, found = decode(payload)
        assert found is not None
        received.extend(found)
    assert received == keys  # every key, in order


async def test_a_key_too_long_for_a_notify_is_announced_as_every_key(
    storage: SqlStorage[Any], listener: Listener
) -> None:
    bus = PostgreSQLBus(storage)
    (payload,) = encode(["k" * bus.max_payload], bus.max_payload)
    await bus.publish(payload)
    (delivered,) = await listener.received(1)
    assert decode(delivered)[1] is None


async def test_the_listening_connection_carries_the_users_settings_and_the_bus_name(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = listener_connections(monkeypatch)
    storage = pg.storage(server_settings={"application_name": "mine", "search_path": "public"})
    await storage.connect()
    started = Listener(PostgreSQLBus(storage))
    try:
        await started.ready()
        ((connection, options),) = opened
        assert options["server_settings"] == {"application_name": APPLICATION_NAME, "search_path": "public"}
        admin = await raw_postgres()
        try:
            name = await admin.fetchval(
                "SELECT application_name FROM pg_stat_activity WHERE pid = $1", connection.get_server_pid()
            )
        finally:
            await admin.close()
        assert name == APPLICATION_NAME
    finally:
        await started.stop()
        await storage.close()


async def test_a_publish_goes_out_when_the_storage_drops_its_pool_meanwhile(pg: Database) -> None:
    # The core drops a storage's pool when its breaker opens: a publish waiting for a connection
    # of the old pool fails there, and is sent again on the new one.
    storage = pg.storage(pool_size=1)
    await storage.connect()
    started = Listener(PostgreSQLBus(storage))
    try:
        await started.ready()
        pool = await storage._pool()
        held = await pool.acquire()
        publish = asyncio.create_task(PostgreSQLBus(storage).publish(b"after the drop"))
        await asyncio.sleep(0.1)  # waiting for the one connection
        storage.drop_connections()
        await asyncio.sleep(0.05)
        await pool.release(held)
        await asyncio.wait_for(publish, 5)
        assert b"after the drop" in await started.received(1)  # at least once: a retried NOTIFY may be twice
    finally:
        await started.stop()
        await storage.close()


# ---------------------------------------------------------------- losing the connection


async def test_a_terminated_listening_connection_raises_at_once(
    storage: SqlStorage[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = listener_connections(monkeypatch)
    started = Listener(PostgreSQLBus(storage))
    try:
        await started.ready()
        ((connection, _),) = opened
        admin = await raw_postgres()
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", connection.get_server_pid())
        finally:
            await admin.close()
        error, took = await raises_within(started.task, 3.0)
        assert took < HEARTBEAT / 2  # killed just after subscribing: seen at once, not at the heartbeat
        assert isinstance(error, Exception)
    finally:
        await started.stop()


async def test_a_silent_server_is_noticed_within_two_heartbeats(
    pg: Database, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    storage, proxy = behind_a_proxy(pg, tcp_proxy)
    await storage.connect()
    started = Listener(PostgreSQLBus(storage))
    try:
        await started.ready()
        await asyncio.sleep(HEARTBEAT * 1.5)  # a heartbeat answered
        assert not started.task.done()
        proxy.blackhole()
        error, took = await raises_within(started.task, 3.0)
        assert took <= HEARTBEAT * 2 + 0.5
        assert isinstance(error, ConnectionError) and "SELECT 1" in str(error)
    finally:
        await started.stop()
        proxy.pass_through()
        await storage.close()


async def test_a_cancelled_listener_closes_its_connection_at_once(
    storage: SqlStorage[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = listener_connections(monkeypatch)
    started = Listener(PostgreSQLBus(storage))
    await started.ready()
    ((connection, _),) = opened
    pid = connection.get_server_pid()
    began = time.monotonic()
    await started.stop()
    assert time.monotonic() - began < 0.5
    assert connection.is_closed()
    deadline = time.monotonic() + 2
    while await backend_alive(pid):
        assert time.monotonic() < deadline, "the listening backend is still there"
        await asyncio.sleep(0.05)


async def test_a_listener_cancelled_while_its_server_is_silent_ends_without_hanging(
    pg: Database, tcp_proxy: Callable[[str, int], TcpProxy]
) -> None:
    storage, proxy = behind_a_proxy(pg, tcp_proxy)
    await storage.connect()
    started = Listener(PostgreSQLBus(storage))
    try:
        await started.ready()
        proxy.blackhole()
        await asyncio.sleep(HEARTBEAT + 0.2)  # a SELECT 1 is waiting for its answer
        began = time.monotonic()
        await started.stop()
        assert time.monotonic() - began < 1.5  # the connection is cut, not closed gracefully
    finally:
        proxy.pass_through()
        await storage.close()
