"""A private redis-server for the benchmark, and a minimal client for the few admin commands the driver sends.

The driver starts its own server on a free loopback port so that nothing else talks to it: the command
counts it reads (``INFO commandstats``) are the benchmarked library's alone. Stdlib only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class AdminClient:
    """Sends one command at a time over RESP and returns the reply (str, int, bytes, list or None)."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def command(self, *parts: str) -> object:
        payload = [f"*{len(parts)}\r\n".encode()]
        for part in parts:
            data = part.encode()
            payload.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(payload))
        return self._read()

    def _read(self) -> object:
        line = self._file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            return [self._read() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected redis reply: {line!r}")

    def reset(self) -> None:
        """Empty the database and zero the command statistics before a run."""
        self.command("FLUSHDB")
        self.command("CONFIG", "RESETSTAT")

    def command_counts(self) -> dict[str, int]:
        """Calls per command since the last reset, from ``INFO commandstats`` (lower-case names)."""
        raw = self.command("INFO", "commandstats")
        assert isinstance(raw, bytes)
        counts: dict[str, int] = {}
        for line in raw.decode().splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line[len("cmdstat_") :].partition(":")
            for field in fields.split(","):
                key, _, value = field.partition("=")
                if key == "calls":
                    counts[name] = int(value)
        return counts

    def version(self) -> str:
        raw = self.command("INFO", "server")
        assert isinstance(raw, bytes)
        for line in raw.decode().splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1].strip()
        return "unknown"


class RedisServer:
    """``redis-server`` on a free loopback port, no persistence, stopped by :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH: install Redis (e.g. apt-get install redis-server)")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(workdir / "redis-server.log", "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--maxclients", "10000",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.admin = self._connect()

    def _connect(self) -> AdminClient:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = AdminClient(self.port)
                client.command("PING")
                return client
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.admin.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
