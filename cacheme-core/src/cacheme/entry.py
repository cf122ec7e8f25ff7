"""What a cached entry carries, and the byte header it has in remote tiers.

An ``Entry`` is a value with its age: when it was loaded from the source
(wall-clock seconds, ``time.time()``, so that processes on other hosts read
the same age), how long that load took, and when this copy of it expires.
Local tiers keep ``Entry`` objects; remote tiers keep the serialized value
behind a small header carrying the three numbers.

The header (version 1), 28 bytes, little-endian, before the serializer's bytes::

    offset  size  field
    0       3     magic b"\\xc1cm"  (0xC1 is the one byte MessagePack never uses; no
                  pickle, JSON or zlib stream starts with it either)
    3       1     version: 1
    4       8     loaded_at   float64, Unix seconds; NaN when unknown
    12      8     load_time   float64, seconds the load took
    20      8     expires_at  float64, Unix seconds this copy expires; +inf never
    28      ...   the value as the node's serializer wrote it

Bytes without the magic (written by cacheme before the header existed) are
read as entries of unknown age. The magic with version 0 is a lease's mark
(``LEASE_MARK``, see ``cacheme.lease``), not an entry: a miss. A header of another version is refused
(``UnknownHeaderError``): the chain counts it as a miss, never an error.
"""

from __future__ import annotations

import math
import struct
from typing import Any

__all__ = [
    "HEADER_SIZE",
    "LEASE_MARK",
    "MAGIC",
    "VERSION",
    "Entry",
    "UnknownHeaderError",
    "copy_expiry",
    "pack",
    "unpack",
]

MAGIC = b"\xc1cm"
VERSION = 1
# What a leased key holds until its value is written (followed by the lease's token).
LEASE_MARK = MAGIC + b"\x00"
_HEADER = struct.Struct("<3sBddd")
HEADER_SIZE = _HEADER.size


class UnknownHeaderError(ValueError):
    """Bytes that start with the header's magic but are not a header this version reads."""


class Entry:
    """A cached value and its age.

    ``loaded_at`` is ``None`` for an entry of unknown age (bytes written
    without a header); ``expires_at`` is ``None`` when this copy never
    expires or its expiry is unknown. ``load_time`` is 0.0 when unknown.
    """

    __slots__ = ("expires_at", "load_time", "loaded_at", "value")

    def __init__(
        self, value: Any, loaded_at: float | None, load_time: float, expires_at: float | None
    ) -> None:
        self.value = value
        self.loaded_at = loaded_at
        self.load_time = load_time
        self.expires_at = expires_at

    def __repr__(self) -> str:
        return (
            f"Entry(value={self.value!r}, loaded_at={self.loaded_at!r}, load_time={self.load_time!r}, "
            f"expires_at={self.expires_at!r})"
        )


def copy_expiry(entry: Entry, ttl: float | None, now: float) -> float | None:
    """When a copy of ``entry`` written now into a tier of ``ttl`` seconds expires.

    No later than ``entry`` itself, and no later than the tier's ttl counted
    from the original load; an entry of unknown age gets the tier's full ttl
    from now. ``None``: never.
    """
    loaded_at = entry.loaded_at
    if ttl is None:
        return entry.expires_at
    own = (now if loaded_at is None else loaded_at) + ttl
    source = entry.expires_at
    return own if source is None or own < source else source


def pack(entry: Entry, expires_at: float | None, body: bytes) -> bytes:
    """The header for ``entry`` (with this copy's ``expires_at``) followed by ``body``."""
    loaded_at = math.nan if entry.loaded_at is None else entry.loaded_at
    expiry = math.inf if expires_at is None else expires_at
    return _HEADER.pack(MAGIC, VERSION, loaded_at, entry.load_time, expiry) + body


def unpack(raw: bytes) -> tuple[float | None, float, float | None, bytes]:
    """``(loaded_at, load_time, expires_at, body)`` of bytes read from a remote tier.

    Bytes without the magic are a body of unknown age: ``(None, 0.0, None, raw)``.
    Raises ``UnknownHeaderError`` for a header this version does not read.
    """
    if raw[:3] != MAGIC:
        return None, 0.0, None, raw
    if len(raw) < HEADER_SIZE or raw[3] != VERSION:
        version = raw[3] if len(raw) > 3 else None
        raise UnknownHeaderError(
            f"cacheme entry header of version {version!r} ({len(raw)} bytes); this version reads {VERSION}"
        )
    _, _, loaded_at, load_time, expires_at = _HEADER.unpack_from(raw)
    return (
        None if math.isnan(loaded_at) else loaded_at,
        load_time,
        None if math.isinf(expires_at) else expires_at,
        raw[HEADER_SIZE:],
    )
