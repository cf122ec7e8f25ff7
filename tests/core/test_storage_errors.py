"""Issue 10, point 6: no storage error reaches a caller, local tiers included; logs stay bounded."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme.chain import ERROR_REPR_LIMIT
from cacheme.storage import MISSING


class BrokenLocal(cacheme.LocalStorage):
    """An in-process storage whose reads and/or writes raise, as a faulty third-party tier would."""

    def __init__(self, *, reads_fail: bool, writes_fail: bool, message: str = "broken") -> None:
        super().__init__("broken://")
        self.reads_fail = reads_fail
        self.writes_fail = writes_fail
        self.message = message
        self.data: dict[str, Any] = {}

    async def close(self) -> None:
        return None

    def get_sync(self, key: str) -> Any:
        if self.reads_fail:
            raise OSError(self.message)
        return self.data.get(key, MISSING)

    def set_sync(self, key: str, value: Any, ttl: timedelta | None) -> None:
        if self.writes_fail:
            raise OSError(self.message)
        self.data[key] = value

    def delete_sync(self, key: str) -> None:
        self.data.pop(key, None)


def node_over(*names: str) -> Any:
    class OverBroken(cacheme.Node):
        number: int

        def key(self) -> str:
            return f"broken:{self.number}"

        async def load(self) -> int:
            return self.number + 100

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=name, ttl=None) for name in names]

    return OverBroken


@pytest.mark.parametrize(("reads_fail", "writes_fail"), [(True, False), (False, True), (True, True)])
async def test_a_failing_local_tier_is_a_counted_miss_never_the_callers_error(
    local: str, reads_fail: bool, writes_fail: bool
) -> None:
    await cacheme.register_storage("broken", BrokenLocal(reads_fail=reads_fail, writes_fail=writes_fail))
    try:
        node = node_over("broken", local)
        assert await cacheme.get(node(number=1)) == 101
        assert await cacheme.get_all([node(number=2), node(number=3)]) == [102, 103]
        assert await cacheme.get(node(number=1)) == 101  # from the second tier, or loaded again
        metrics = cacheme.stats(node)
        assert metrics.storage_error_count() > 0
        assert metrics.load_failure_count() == 0
    finally:
        await cacheme.unregister_storage("broken")


async def test_a_local_tier_behind_another_that_fails_is_a_counted_miss(local: str) -> None:
    await cacheme.register_storage("broken", BrokenLocal(reads_fail=True, writes_fail=True))
    try:
        node = node_over(local, "broken")
        assert await cacheme.get(node(number=1)) == 101
        assert await cacheme.get(node(number=1)) == 101
        assert cacheme.stats(node).load_count() == 1  # the first tier answered the second get
    finally:
        await cacheme.unregister_storage("broken")


async def test_a_huge_error_is_logged_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    # A name of its own: failures of one storage are logged at most once a second.
    await cacheme.register_storage(
        "broken-huge", BrokenLocal(reads_fail=True, writes_fail=False, message="x" * 1_000_000)
    )
    try:
        node = node_over("broken-huge")
        with caplog.at_level(logging.WARNING, logger="cacheme"):
            assert await cacheme.get(node(number=1)) == 101
        messages = [record.getMessage() for record in caplog.records if record.name == "cacheme"]
        assert messages, "the failure was not logged"
        assert all(len(message) < ERROR_REPR_LIMIT + 400 for message in messages)
        full_length = len(repr(OSError("x" * 1_000_000)))
        assert f"({full_length} characters)" in messages[0]
    finally:
        await cacheme.unregister_storage("broken-huge")


async def test_a_refused_key_counts_no_request(local: str) -> None:
    class BadKeyNode(cacheme.Node):
        def key(self) -> str:
            return "nul\x00"

        async def load(self) -> int:
            return 1

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(storage=local, ttl=None)]

    with pytest.raises(cacheme.InvalidKeyError):
        await cacheme.get(BadKeyNode())
    with pytest.raises(cacheme.InvalidKeyError):
        await cacheme.get_all([BadKeyNode()])
    assert cacheme.stats(BadKeyNode).request_count() == 0
