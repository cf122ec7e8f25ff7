"""``Meta.lease``: what it accepts, and the error when no tier of the chain can hold leases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme.entry import LEASE_MARK, UnknownHeaderError, unpack


def node_with_lease(storage: str, lease: Any) -> Any:
    class Leased(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"leased:{self.id}"

        async def load(self) -> int:
            return self.id

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage, timedelta(seconds=60))]

    Leased.Meta.lease = lease
    return Leased


@pytest.mark.parametrize(
    "wrong", [10, 1.5, "10s", timedelta(0), timedelta(seconds=-1), timedelta(microseconds=999)]
)
def test_a_lease_is_a_timedelta_of_a_millisecond_at_least(wrong: object) -> None:
    with pytest.raises(cacheme.NodeDefinitionError, match=r"Wrong\.Meta\.lease must be a timedelta"):

        class Wrong(cacheme.Node):
            id: int

            def key(self) -> str:
                return f"wrong:{self.id}"

            class Meta(cacheme.Node.Meta):
                caches = [cacheme.Cache("local", None)]
                lease = wrong  # type: ignore[assignment]


def test_a_lease_and_a_doorkeeper_together_are_refused() -> None:
    with pytest.raises(cacheme.NodeDefinitionError, match=r"both lease and doorkeeper"):

        class Both(cacheme.Node):
            id: int

            def key(self) -> str:
                return f"both:{self.id}"

            class Meta(cacheme.Node.Meta):
                caches = [cacheme.Cache("local", None)]
                lease = timedelta(seconds=5)
                doorkeeper = cacheme.BloomFilter(1000, 0.01)


async def test_a_chain_without_a_tier_that_holds_leases_is_an_error_at_first_use(local: str) -> None:
    leased = node_with_lease(local, timedelta(seconds=5))
    with pytest.raises(cacheme.NodeDefinitionError, match=r"no tier of its chain can hold leases"):
        await cacheme.get(leased(id=1))


async def test_no_lease_keeps_the_chain_as_it_was(local: str) -> None:
    plain = node_with_lease(local, None)
    assert await cacheme.get(plain(id=3)) == 3
    assert cacheme.stats(plain).lease_count() == 0


def test_a_lease_mark_is_no_entry_of_any_version() -> None:
    with pytest.raises(UnknownHeaderError):
        unpack(LEASE_MARK + b"0123456789abcdef")
