"""Serializers round-trip the documented types, and write no class names."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import pickle
import uuid
from typing import Any

import pydantic
import pytest

from cacheme import serializer as s


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
