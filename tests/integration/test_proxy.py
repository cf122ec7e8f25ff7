"""The tests' TCP proxy (tests/fixtures/proxy.py) against the shared Redis: each mode does what it says."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fixtures.proxy import Mode, TcpProxy
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT

ProxyFactory = Callable[[str, int], TcpProxy]


@pytest.fixture
def proxy(redis_shared_url: str, tcp_proxy: ProxyFactory) -> TcpProxy:
    return tcp_proxy(SHARED_HOST, SHARED_PORT)


@pytest.fixture
def client(proxy: TcpProxy) -> Iterator[redis.Redis]:
    """A client through the proxy that never retries and gives up after 0.5 s."""
    with redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    ) as client:
        yield client


def _timed_ping(client: redis.Redis) -> float:
    started = time.monotonic()
    assert client.ping()
    return time.monotonic() - started


def test_pass_through_relays_commands(proxy: TcpProxy, client: redis.Redis) -> None:
    key = f"cacheme-tests:proxy:{uuid.uuid4().hex}"
    try:
        assert client.set(key, b"value", ex=60)
        assert client.get(key) == b"value"
    finally:
        client.delete(key)
    assert proxy.mode is Mode.PASS
    assert proxy.connection_count() == 1
    assert proxy.url("redis", "/0") == f"redis://127.0.0.1:{proxy.port}/0"


def test_delay_holds_each_direction_for_the_delay(proxy: TcpProxy, client: redis.Redis) -> None:
    _timed_ping(client)  # connected
    proxy.delay(0.15)
    assert _timed_ping(client) >= 0.3  # the request and the reply, each held 0.15 s
    proxy.pass_through()
    assert _timed_ping(client) < 0.15


def test_delay_keeps_the_order_of_chunks(proxy: TcpProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock:
        proxy.delay(0.3)
        sock.sendall(b"ECHO first\r\n")
        while proxy.bytes_from_clients == 0:  # the proxy holds the first chunk for 0.3 s
            time.sleep(0.001)
        proxy.pass_through()  # a later chunk, due at once, must still come after it
        sock.sendall(b"ECHO second\r\n")
        expected = b"$5\r\nfirst\r\n$6\r\nsecond\r\n"
        received = b""
        while len(received) < len(expected):
            chunk = sock.recv(1024)
            assert chunk, "the proxy closed the connection"
            received += chunk
    assert received == expected


def test_blackhole_answers_nothing_on_open_and_new_connections(proxy: TcpProxy, client: redis.Redis) -> None:
    assert client.ping()
    proxy.blackhole()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    with (
        redis.Redis(
            host="127.0.0.1", port=proxy.port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0)
        ) as fresh,
        pytest.raises(redis.TimeoutError),
    ):
        fresh.ping()
    proxy.pass_through()
    assert client.ping()  # redis-py dropped the connection that timed out and makes a new one


def test_reset_aborts_open_connections_and_resets_new_ones(proxy: TcpProxy, client: redis.Redis) -> None:
    assert client.ping()
    assert proxy.connection_count() == 1
    proxy.reset()
    assert proxy.connection_count() == 0
    with pytest.raises(redis.ConnectionError):
        client.ping()
    with pytest.raises(redis.ConnectionError):
        client.ping()  # a new connection: reset too
    with (
        pytest.raises(ConnectionResetError),
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as sock,
    ):
        sock.sendall(b"PING\r\n")
        sock.recv(16)
    proxy.pass_through()
    assert client.ping()


def test_stop_closes_every_connection_and_the_listener(
    tcp_proxy: ProxyFactory, redis_shared_url: str
) -> None:
    proxy = tcp_proxy(SHARED_HOST, SHARED_PORT)
    port = proxy.port
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(16) == b"+PONG\r\n"
        proxy.stop()
        assert sock.recv(16) == b""  # closed by the proxy
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
