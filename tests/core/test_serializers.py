"""Serializers round-trip the documented types, and write no class names."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import pickle
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import pytest_asyncio

import cacheme
from cacheme import serializer as s
from tests.waiting import flights_done


@dataclasses.dataclass
class Point:
    x: int
    label: str


class Account(pydantic.BaseModel):
    id: uuid.UUID
    balance: decimal.Decimal
    opened: datetime.datetime
    tags: list[str]


SAMPLE_ACCOUNT = Account(
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    balance=decimal.Decimal("10.25"),
    opened=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    tags=["a", "b"],
)

TYPED_SERIALIZERS = [
    s.JSONSerializer(),
    s.MsgPackSerializer(),
    s.CompressedJSONSerializer(),
    s.CompressedMsgPackSerializer(),
]
ALL_SERIALIZERS = [*TYPED_SERIALIZERS, s.PickleSerializer(), s.CompressedPickleSerializer()]


@pytest.mark.parametrize("codec", ALL_SERIALIZERS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize(
    "value", [None, True, 1, 1.5, "text", "ünïcode", [1, "a"], {"k": [1, 2]}, {"nested": {"x": None}}]
)
def test_primitives_round_trip(codec: Any, value: Any) -> None:
    data = codec.dumps(value)
    assert isinstance(data, bytes)
    assert codec.loads(data) == value


@pytest.mark.parametrize("codec", TYPED_SERIALIZERS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (datetime.datetime, datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)),
        (datetime.date, datetime.date(2024, 5, 6)),
        (datetime.time, datetime.time(7, 8, 9)),
        (uuid.UUID, uuid.uuid4()),
        (decimal.Decimal, decimal.Decimal("3.14159")),
        (Point, Point(1, "p")),
        (Account, SAMPLE_ACCOUNT),
        (list[Point], [Point(1, "a"), Point(2, "b")]),
        (dict[str, Account], {"x": SAMPLE_ACCOUNT}),
    ],
)
def test_rich_types_come_back_through_the_annotation(codec: Any, annotation: Any, value: Any) -> None:
    data = codec.dumps(value)
    assert b"Point" not in data and b"Account" not in data  # no class names in stored bytes
    assert pydantic.TypeAdapter(annotation).validate_python(codec.loads(data)) == value


def test_msgpack_keeps_binary_anywhere() -> None:
    @dataclasses.dataclass
    class Blob:
        data: bytes

    codec = s.MsgPackSerializer()
    raw = bytes(range(256))
    assert codec.loads(codec.dumps(raw)) == raw
    assert pydantic.TypeAdapter(Blob).validate_python(codec.loads(codec.dumps(Blob(raw)))) == Blob(raw)


def test_json_refuses_non_utf8_bytes_rather_than_corrupting_them() -> None:
    with pytest.raises(Exception):  # noqa: B017 - pydantic_core's error type
        s.JSONSerializer().dumps(b"\xff\xfe")


def test_compressed_variants_compress_with_zlib() -> None:
    value = {"text": "x" * 10_000}
    pairs: list[tuple[s.Serializer, s.Serializer]] = [
        (s.PickleSerializer(), s.CompressedPickleSerializer()),
        (s.JSONSerializer(), s.CompressedJSONSerializer()),
        (s.MsgPackSerializer(), s.CompressedMsgPackSerializer()),
    ]
    for plain, compressed in pairs:
        assert len(compressed.dumps(value)) < len(plain.dumps(value)) / 10
        assert compressed.loads(compressed.dumps(value)) == value


def test_pickle_restores_types_itself() -> None:
    assert s.PickleSerializer.restores_types and s.CompressedPickleSerializer.restores_types
    assert not s.JSONSerializer.restores_types and not s.MsgPackSerializer.restores_types
    assert s.PickleSerializer().loads(pickle.dumps(Point(1, "x"))) == Point(1, "x")
    assert isinstance(s.PickleSerializer(), s.Serializer)


COMPRESSED_SERIALIZERS = [
    s.CompressedPickleSerializer,
    s.CompressedJSONSerializer,
    s.CompressedMsgPackSerializer,
]


def zlib_bomb(inflated_size: int) -> bytes:
    """zlib bytes (level 9) that inflate to ``inflated_size`` zero bytes, built without holding them."""
    compressor = zlib.compressobj(9)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(inflated_size // len(chunk))]
    return b"".join([*parts, compressor.flush()])


@pytest.mark.parametrize("codec_class", COMPRESSED_SERIALIZERS, ids=lambda c: c.__name__)
def test_compressed_values_up_to_max_size_inflate_and_larger_ones_are_refused(codec_class: Any) -> None:
    assert codec_class().max_size == s.DEFAULT_MAX_INFLATED_SIZE == 32 * 1024 * 1024
    value = "é" * 50_000
    inflated = len(codec_class.inner.dumps(value))
    data = codec_class().dumps(value)
    assert codec_class(max_size=inflated).loads(data) == value
    with pytest.raises(s.DecompressionLimitError, match=f"more than {inflated - 1} bytes") as error:
        codec_class(max_size=inflated - 1).loads(data)
    assert isinstance(error.value, ValueError) and "max_size" in str(error.value)


@pytest.mark.parametrize("codec_class", COMPRESSED_SERIALIZERS, ids=lambda c: c.__name__)
def test_a_zlib_bomb_is_refused_without_inflating_it(codec_class: Any) -> None:
    bomb = zlib_bomb(256 * 1024 * 1024)
    codec = codec_class(max_size=1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(s.DecompressionLimitError):
            codec.loads(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


@pytest.mark.parametrize("codec_class", COMPRESSED_SERIALIZERS, ids=lambda c: c.__name__)
def test_truncated_or_corrupt_compressed_bytes_are_an_error(codec_class: Any) -> None:
    data = codec_class().dumps({"k": "v" * 1000})
    with pytest.raises(zlib.error):
        codec_class().loads(data[:-4])
    with pytest.raises(zlib.error):
        codec_class().loads(b"not zlib at all")


@pytest.mark.parametrize("max_size", [0, -1, 1.5, "1", True, None])
def test_max_size_must_be_a_positive_int(max_size: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="max_size"):
        s.CompressedMsgPackSerializer(max_size=max_size)


class BlobNode(cacheme.Node):
    """A node whose bytes value is loaded from a counted source; a subclass per test sets Meta."""

    id: int

    def key(self) -> str:
        return f"blob:{self.id}"


@pytest_asyncio.fixture
async def sqlite_tier(tmp_path: Path) -> AsyncIterator[str]:
    """A SQLite storage registered under a name of its own: the remote tier the engine reads."""
    name = f"sqlite-{uuid.uuid4().hex[:8]}"
    await cacheme.register_storage(name, cacheme.Storage(f"sqlite:///{tmp_path}/x.db"))
    yield name
    await cacheme.unregister_storage(name)


def blob_node_class(storage: str, serializer: s.Serializer, value: bytes) -> tuple[type[BlobNode], list[int]]:
    """A BlobNode class cached only in ``storage`` whose source gives ``value``; and the ids it loaded."""
    loaded: list[int] = []

    class Blob(BlobNode):
        async def load(self) -> bytes:
            loaded.append(self.id)
            return value

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    Blob.Meta.serializer = serializer
    return Blob, loaded


async def test_a_zlib_bomb_in_a_remote_tier_is_a_counted_miss_that_reloads(sqlite_tier: str) -> None:
    node_cls, loaded = blob_node_class(sqlite_tier, s.CompressedMsgPackSerializer(), b"from the source")
    node = node_cls(id=1)
    bomb = zlib_bomb(256 * 1024 * 1024)
    assert len(bomb) < 300 * 1024
    await cacheme.registered_storages()[sqlite_tier].set(node.full_key(), bomb, None)
    tracemalloc.start()
    try:
        assert await cacheme.get(node) == b"from the source"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The default cap, 32 MiB, inflated (and copied once), never the bomb's 256 MiB.
    assert peak < 80 * 1024 * 1024
    stats = cacheme.stats(node_cls)
    assert (loaded, stats.storage_error_count(), stats.hit_count()) == ([1], 1, 0)
    assert await flights_done()
    assert await cacheme.get(node_cls(id=1)) == b"from the source"  # the source's value replaced the bomb
    assert (loaded, stats.storage_error_count(), stats.hit_count()) == ([1], 1, 1)


async def test_a_value_up_to_max_size_round_trips_through_a_remote_tier(sqlite_tier: str) -> None:
    max_size = 1024 * 1024
    value = bytes(max_size - 5)  # MsgPack adds a 5-byte header to a value this long
    fits, fits_loaded = blob_node_class(sqlite_tier, s.CompressedMsgPackSerializer(max_size), value)
    too_big, too_big_loaded = blob_node_class(
        sqlite_tier, s.CompressedMsgPackSerializer(max_size), value + b"!"
    )
    for _ in range(3):
        assert await cacheme.get(fits(id=1)) == value
        assert await cacheme.get(too_big(id=2)) == value + b"!"
        assert await flights_done()
    assert (fits_loaded, cacheme.stats(fits).storage_error_count(), cacheme.stats(fits).hit_count()) == (
        [1],
        0,
        2,
    )
    # One byte more than max_size: stored, but every read is a counted miss that reloads.
    assert too_big_loaded == [2, 2, 2]
    assert (cacheme.stats(too_big).storage_error_count(), cacheme.stats(too_big).hit_count()) == (2, 0)
