"""A benchmark's child process: a program of its own (its own event loop) that the driver talks to
through lines: commands on its stdin, one line of answer each on its stdout; its stderr to a file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["LINE_LIMIT", "Child"]

LINE_LIMIT = 64 * 1024 * 1024  # a child's JSON line may hold a figure per key or per request


class Child:
    """``python SCRIPT --child SPEC_JSON``, run from ``cwd``."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @classmethod
    async def start(
        cls,
        name: str,
        script: Path,
        spec: dict[str, Any],
        log: Path,
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
    ) -> Child:
        with log.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                "--child",
                json.dumps(spec),
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errors,
                limit=LINE_LIMIT,
            )
        return cls(name, process, log)

    def errors(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            self.kill()
            raise RuntimeError(
                f"{self.name} said nothing within {timeout:g} s; stderr:\n{self.errors()}"
            ) from None
        if not raw:
            await self.process.wait()
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}); stderr:\n{self.errors()}")
        return raw.decode().strip()

    async def ready(self, timeout: float) -> str:
        """What follows the child's ``ready`` line."""
        line = await self.line(timeout)
        if not line.startswith("ready"):
            raise RuntimeError(f"{self.name}: expected 'ready', got {line[:200]!r}")
        return line[len("ready") :].strip()

    async def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode() + b"\n")
        await self.process.stdin.drain()

    async def ask(self, text: str, timeout: float) -> dict[str, Any]:
        await self.send(text)
        answer: dict[str, Any] = json.loads(await self.line(timeout))
        return answer

    async def finish(self, timeout: float, *, say_exit: bool = False) -> list[str]:
        """Wait for the child's exit (first telling it ``exit`` when ``say_exit``); the lines it
        wrote to stderr. A child that does not exit within ``timeout`` is killed."""
        if say_exit:
            with contextlib.suppress(ConnectionError):
                await self.send("exit")
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            self.kill()
            await self.process.wait()
        if self.process.returncode != 0:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; stderr:\n{self.errors()}")
        return [line for line in self.errors().splitlines() if line.strip()]

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
