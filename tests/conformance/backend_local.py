"""The in-process storages in the conformance suite."""

from __future__ import annotations

import pytest

import cacheme
from cacheme.storage import BaseStorage
from tests.conformance.cases import StorageCase


def _local(policy: str) -> StorageCase:
    async def make(request: pytest.FixtureRequest) -> BaseStorage:
        storage = cacheme.Storage(f"local://{policy}", size=100_000)
        await storage.connect()
        return storage

    return StorageCase(id=f"local-{policy}", make=make)


CASES = [_local("tlfu"), _local("lru")]
