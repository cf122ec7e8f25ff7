from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

import cacheme


@pytest_asyncio.fixture
async def local() -> AsyncIterator[str]:
    """A fresh local://tlfu storage registered as "local"."""
    await cacheme.register_storage("local", cacheme.Storage("local://tlfu", size=100_000))
    yield "local"
    await cacheme.unregister_storage("local")


@pytest_asyncio.fixture
async def local2() -> AsyncIterator[str]:
    """A second local tier (local://lru) registered as "local2"."""
    await cacheme.register_storage("local2", cacheme.Storage("local://lru", size=100_000))
    yield "local2"
    await cacheme.unregister_storage("local2")
