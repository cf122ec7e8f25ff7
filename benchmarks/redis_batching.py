"""What auto-batching saves: Redis commands and round trips per 10,000 concurrent gets.

    .venv/bin/python benchmarks/redis_batching.py [--requests 10000] [--url redis://127.0.0.1:PORT]

Without ``--url`` it starts its own ``redis-server`` on a free loopback port (and stops it), so that
the command counts (``CONFIG RESETSTAT`` then ``INFO commandstats``) are this script's alone. Round
trips are counted on the client: every write of a request to a socket (one command, or a whole
pipeline) waits for its replies once. Connection set-up (the HELLO, CLIENT SETINFO... that redis-py
sends on a new connection) is reported apart. Every key is present (a warm cache), so through
``cacheme.get`` every request is a hit in Redis; elapsed times are indicative only (2 shared cores).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from redis.asyncio.connection import AbstractConnection

import cacheme
from cacheme_redis.storage import RedisStorage

HANDSHAKE = {"hello", "client|setinfo", "client|setname", "select", "auth", "ping"}


class RoundTrips:
    """Counts the request writes of every redis-py asyncio connection, and its connection set-ups."""

    def __init__(self) -> None:
        self.writes = 0
        self.setup_writes = 0
        self.connects = 0
        self._connecting: set[int] = set()

    @contextmanager
    def counting(self) -> Iterator[None]:
        send: Callable[..., Awaitable[None]] = AbstractConnection.send_packed_command
        connect: Callable[[AbstractConnection], Awaitable[None]] = AbstractConnection.connect

        async def counted_send(conn: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            if id(conn) in self._connecting:
                self.setup_writes += 1
            else:
                self.writes += 1
            await send(conn, *args, **kwargs)

        async def counted_connect(conn: AbstractConnection) -> None:
            if conn.is_connected:
                await connect(conn)
                return
            self.connects += 1
            self._connecting.add(id(conn))
            try:
                await connect(conn)
            finally:
                self._connecting.discard(id(conn))

        setattr(AbstractConnection, "send_packed_command", counted_send)  # noqa: B010 - instrumenting
        setattr(AbstractConnection, "connect", counted_connect)  # noqa: B010
        try:
            yield
        finally:
            setattr(AbstractConnection, "send_packed_command", send)  # noqa: B010
            setattr(AbstractConnection, "connect", connect)  # noqa: B010


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def own_server() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="cacheme-redis-bench-")
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def command_counts(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


class Item(cacheme.Node):
    id: int

    def key(self) -> str:
        return f"bench-item:{self.id}"

    async def load(self) -> str:
        return f"value-{self.id}"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="redis-bench", ttl=None)]


async def measure(
    url: str, requests: int, batch: bool, through: str
) -> tuple[Counter[str], Counter[str], RoundTrips, float]:
    control = redis.Redis.from_url(url)
    control.flushdb()
    storage = RedisStorage(url, batch=batch)
    await cacheme.register_storage("redis-bench", storage)
    try:
        nodes = [Item(id=i) for i in range(requests)]
        await cacheme.get_all(nodes)  # warm: every key is in Redis
        for _ in range(1000):  # get_all answers before its write-back has ended
            if not cacheme.singleflight.in_flight_count():
                break
            await asyncio.sleep(0.01)
        await storage.close()  # start from no connection, so connection set-up is counted
        call: Callable[[int], Awaitable[Any]]
        if through == "storage.get":
            keys = [node.full_key() for node in nodes]

            def call(i: int) -> Awaitable[Any]:
                return storage.get(keys[i])
        else:

            def call(i: int) -> Awaitable[Any]:
                return cacheme.get(nodes[i])

        control.config_resetstat()
        trips = RoundTrips()
        with trips.counting():
            started = time.perf_counter()
            results = await asyncio.gather(*(call(i) for i in range(requests)))
            elapsed = time.perf_counter() - started
        assert all(result is not None for result in results)
        counts = command_counts(control)
        counts.pop("config|resetstat", None)
        handshake = Counter({name: n for name, n in counts.items() if name in HANDSHAKE})
        for name in handshake:
            del counts[name]
        return counts, handshake, trips, elapsed
    finally:
        await cacheme.unregister_storage("redis-bench")
        control.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--url", help="a Redis of your own (it is FLUSHDB'ed); default: start one")
    args = parser.parse_args()
    with own_server() if args.url is None else _given(args.url) as url:
        print(f"{args.requests} concurrent gets of distinct present keys, redis-py {redis.__version__}\n")
        print("| path | batch | Redis commands | round trips | connections opened | elapsed |")
        print("|---|---|---|---|---|---|")
        for through in ("storage.get", "cacheme.get"):
            for batch in (True, False):
                counts, handshake, trips, elapsed = await measure(url, args.requests, batch, through)
                commands = ", ".join(f"{n} {name.upper()}" for name, n in sorted(counts.items()))
                setup = ", ".join(f"{n} {name.upper()}" for name, n in sorted(handshake.items()))
                print(
                    f"| {through} | {batch} | {commands} | {trips.writes} "
                    f"| {trips.connects} (+{trips.setup_writes} set-up round trips; Redis counts {setup}) "
                    f"| {elapsed * 1000:.0f} ms |"
                )


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    asyncio.run(main())
