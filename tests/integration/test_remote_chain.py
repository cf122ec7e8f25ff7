"""The engine over real remote tiers: [local, Redis, SQLite].

Back-fill across remote tiers, typed values read back through the loader's
annotation, and corrupt bytes turned into a counted miss.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pydantic
import pytest_asyncio

import cacheme
from cacheme.serializer import JSONSerializer, MsgPackSerializer
from tests.waiting import flights_done


class Account(pydantic.BaseModel):
    id: uuid.UUID
    balance: Decimal
    opened: datetime.datetime


@pytest_asyncio.fixture
async def chain(tmp_path: Path) -> AsyncIterator[dict[str, cacheme.BaseStorage]]:
    """Three tiers registered under fresh names; the Redis keys get a prefix of their own."""
    suffix = uuid.uuid4().hex[:8]
    storages = {
        f"local-{suffix}": cacheme.Storage("local://lru", size=1000),
        f"redis-{suffix}": cacheme.Storage("redis://127.0.0.1:6379/0"),
        f"sqlite-{suffix}": cacheme.Storage(f"sqlite:///{tmp_path}/chain.db", sweep_interval=None),
    }
    for name, storage in storages.items():
        await cacheme.register_storage(name, storage)
    cacheme.set_prefix(f"chain-{suffix}")
    try:
        yield storages
    finally:
        cacheme.set_prefix("cacheme")
        for name in storages:
            await cacheme.unregister_storage(name)


def account_node(names: list[str], serializer: Any) -> Any:
    class AccountNode(cacheme.Node):
        id: uuid.UUID
        loads: ClassVar[int] = 0

        def key(self) -> str:
            return f"account:{self.id}"

        async def load(self) -> Account:
            AccountNode.loads += 1
            return Account(id=self.id, balance=Decimal("10.50"), opened=datetime.datetime(2024, 1, 2, 3, 4))

        class Meta(cacheme.Node.Meta):
            version = "v1"

    AccountNode.Meta.caches = [cacheme.Cache(name, datetime.timedelta(minutes=5)) for name in names]
    AccountNode.Meta.serializer = serializer
    return AccountNode


async def test_a_hit_in_the_last_tier_back_fills_every_tier_before_it(
    chain: dict[str, cacheme.BaseStorage],
) -> None:
    local, redis, _sqlite = chain.values()
    node_class = account_node(list(chain), MsgPackSerializer())
    node = node_class(id=uuid.uuid4())
    key = node.full_key()
    first = await cacheme.get(node)
    assert await flights_done()
    assert node_class.loads == 1
    # Only SQLite keeps it now: the read goes through local and Redis, finds it last, and back-fills both.
    await local.delete(key)
    await redis.delete(key)
    again = await cacheme.get(node)
    assert await flights_done()
    assert again == first and isinstance(again, Account)
    assert await redis.get(key) is not None
    assert (await local.get(key)).value == first
    assert node_class.loads == 1
    # get_all back-fills the same way, in batch.
    others = [node_class(id=uuid.uuid4()) for _ in range(5)]
    values = await cacheme.get_all(others)
    assert await flights_done()
    for other in others:
        await local.delete(other.full_key())
        await redis.delete(other.full_key())
    assert await cacheme.get_all(others) == values
    assert await flights_done()
    assert await redis.get_many([o.full_key() for o in others]) != {}
    assert len(await redis.get_many([o.full_key() for o in others])) == 5
    assert node_class.loads == 6
    assert cacheme.stats(node_class).storage_error_count() == 0


async def test_values_read_back_from_remote_tiers_have_the_loaders_type(
    chain: dict[str, cacheme.BaseStorage],
) -> None:
    names = list(chain)
    for serializer in (JSONSerializer(), MsgPackSerializer()):
        node_class = account_node(names[1:], serializer)  # remote tiers only: every read decodes
        node = node_class(id=uuid.uuid4())
        loaded = await cacheme.get(node)
        assert await flights_done()
        read_back = await cacheme.get(node)
        assert isinstance(read_back, Account)
        assert read_back == loaded
        assert node_class.loads == 1
        assert cacheme.stats(node_class).hit_count() == 1


async def test_corrupt_bytes_in_a_remote_tier_are_a_counted_miss(
    chain: dict[str, cacheme.BaseStorage],
) -> None:
    _, redis, sqlite = chain.values()
    node_class = account_node(list(chain)[1:], MsgPackSerializer())
    node = node_class(id=uuid.uuid4())
    await redis.set(node.full_key(), b"\xc1 not msgpack", None)
    await sqlite.set(node.full_key(), b'{"id": "not a uuid"}', None)
    value = await cacheme.get(node)
    assert isinstance(value, Account)
    assert node_class.loads == 1  # both tiers failed to decode: loaded from the source
    metrics = cacheme.stats(node_class)
    assert metrics.storage_error_count() == 2
    assert metrics.hit_count() == 0


async def test_a_local_tier_behind_a_remote_one_answers_and_back_fills_it(
    chain: dict[str, cacheme.BaseStorage],
) -> None:
    local_name, redis_name, _sqlite_name = chain
    local, redis = chain[local_name], chain[redis_name]
    node_class = account_node([redis_name, local_name], MsgPackSerializer())
    nodes = [node_class(id=uuid.uuid4()) for _ in range(5)]
    values = await cacheme.get_all(nodes)
    assert await flights_done()
    for node in nodes:
        await redis.delete(node.full_key())
    # Redis misses, the local tier behind it has them: answered from there, Redis filled again.
    assert await cacheme.get_all(nodes) == values
    assert await cacheme.get(nodes[0]) == values[0]
    assert await flights_done()
    assert len(await redis.get_many([node.full_key() for node in nodes])) == 5
    assert (await local.get(nodes[0].full_key())).value == values[0]
    assert node_class.loads == 5
