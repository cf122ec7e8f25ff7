"""Serializers: how a value becomes bytes for a remote storage, and back.

JSON and MsgPack write plain data only (no class names), so that nobody who
can write to the cache can make a reader import or build arbitrary classes.
Types come back through the return annotation of the node's ``load``: the
engine validates what these serializers read with pydantic against it.
Pickle restores any Python object by itself: use it only with storages that
only trusted code can write to.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import pickle
import uuid
import zlib
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

import msgpack
import pydantic
import pydantic_core

from cacheme.errors import CachemeError

__all__ = [
    "DEFAULT_MAX_INFLATED_SIZE",
    "DecompressionLimitError",
    "Serializer",
    "PickleSerializer",
    "JSONSerializer",
    "MsgPackSerializer",
    "CompressedPickleSerializer",
    "CompressedJSONSerializer",
    "CompressedMsgPackSerializer",
]

COMPRESSION_LEVEL = 3

# The most bytes a Compressed* serializer inflates one cached value to, unless
# told otherwise (its ``max_size``): what a corrupt or hostile entry can cost in
# memory (about twice this, briefly) and in time on the event loop.
DEFAULT_MAX_INFLATED_SIZE: Final = 32 * 1024 * 1024


@runtime_checkable
class Serializer(Protocol):
    """``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``.

    ``restores_types`` says whether ``loads`` gives back the original types
    by itself (pickle); when it is False the engine converts what ``loads``
    returns to the return type of the node's ``load``.
    """

    restores_types: ClassVar[bool]

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class PickleSerializer:
    restores_types: ClassVar[bool] = True

    def dumps(self, obj: Any) -> bytes:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


class JSONSerializer:
    """JSON through pydantic: primitives, datetime/date/time, UUID, Decimal,
    dataclasses and pydantic models. ``bytes`` must be UTF-8 text in JSON;
    use MsgPack or Pickle for arbitrary binary values."""

    restores_types: ClassVar[bool] = False

    def dumps(self, obj: Any) -> bytes:
        return pydantic_core.to_json(obj)

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


def _msgpack_default(obj: Any) -> Any:
    """Turn what msgpack cannot pack into plain data (bytes stay bytes)."""
    if isinstance(obj, pydantic.BaseModel):
        return obj.model_dump()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (uuid.UUID, decimal.Decimal)):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"MsgPackSerializer cannot serialize {type(obj).__name__}")


class MsgPackSerializer:
    """MsgPack: the same types as JSON, plus raw bytes anywhere in the value."""

    restores_types: ClassVar[bool] = False

    def dumps(self, obj: Any) -> bytes:
        packed: bytes = msgpack.packb(obj, default=_msgpack_default, use_bin_type=True, datetime=False)
        return packed

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)


class DecompressionLimitError(CachemeError, ValueError):
    """Compressed cached bytes inflate to more than the serializer's ``max_size``.

    The engine treats it like any value that does not decode: a miss, logged
    and counted in ``storage_error_count``, loaded again from the source.
    """


class _Compressed:
    """zlib (level 3) around another serializer; ``loads`` inflates at most ``max_size`` bytes.

    ``max_size`` (default ``DEFAULT_MAX_INFLATED_SIZE``, 32 MiB) bounds what one
    cached value may inflate to: bytes that inflate further (a corrupt entry,
    or a "zlib bomb" written by someone who can write to the storage) raise
    ``DecompressionLimitError`` after inflating ``max_size + 1`` bytes, never more.
    """

    inner: ClassVar[PickleSerializer | JSONSerializer | MsgPackSerializer]

    def __init__(self, max_size: int = DEFAULT_MAX_INFLATED_SIZE) -> None:
        if not isinstance(max_size, int) or isinstance(max_size, bool):
            raise TypeError(f"{type(self).__name__} max_size must be an int (bytes), got {max_size!r}")
        if max_size <= 0:
            raise ValueError(f"{type(self).__name__} max_size must be positive (bytes), got {max_size!r}")
        self.max_size = max_size

    def dumps(self, obj: Any) -> bytes:
        return zlib.compress(self.inner.dumps(obj), COMPRESSION_LEVEL)

    def loads(self, data: bytes) -> Any:
        return self.inner.loads(self._inflate(data))

    def _inflate(self, data: bytes) -> bytes:
        """``data`` inflated: ``DecompressionLimitError`` past ``max_size``, ``zlib.error`` if corrupt."""
        inflater = zlib.decompressobj()
        inflated = inflater.decompress(data, self.max_size + 1)
        if len(inflated) > self.max_size:
            raise DecompressionLimitError(
                f"{type(self).__name__}: cached bytes inflate to more than {self.max_size} bytes (max_size); "
                f"the entry is not read. Pass a larger max_size to {type(self).__name__}(max_size=...) "
                "if values this large are expected."
            )
        if not inflater.eof:
            raise zlib.error("incomplete or truncated zlib stream")
        return inflated

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_size={self.max_size})"


class CompressedPickleSerializer(_Compressed):
    restores_types: ClassVar[bool] = True
    inner = PickleSerializer()


class CompressedJSONSerializer(_Compressed):
    restores_types: ClassVar[bool] = False
    inner = JSONSerializer()


class CompressedMsgPackSerializer(_Compressed):
    restores_types: ClassVar[bool] = False
    inner = MsgPackSerializer()
