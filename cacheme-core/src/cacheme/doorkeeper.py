"""TinyLFU's doorkeeper: a Bloom filter in front of the caches.

On a load from the source, a key the filter has not seen is only remembered
(and not cached); a key it has seen is cached. One-hit wonders thus never
take space in the caches.
"""

from __future__ import annotations

import hashlib
import math
from typing import Protocol, runtime_checkable

__all__ = ["DoorKeeper", "BloomFilter"]


@runtime_checkable
class DoorKeeper(Protocol):
    def put(self, key: str) -> None: ...

    def contains(self, key: str) -> bool: ...


class BloomFilter:
    """A Bloom filter for ``size`` keys at false positive rate ``fp_rate``.

    It clears itself after ``size`` insertions, so that it forgets old keys.
    """

    def __init__(self, size: int, fp_rate: float) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"BloomFilter size must be a positive int, got {size!r}")
        if not 0.0 < fp_rate < 1.0:
            raise ValueError(f"BloomFilter fp_rate must be between 0 and 1, got {fp_rate!r}")
        self.size = size
        self.fp_rate = fp_rate
        bits = math.ceil(-size * math.log(fp_rate) / (math.log(2) ** 2))
        self._bit_count = max(64, bits)
        self._hash_count = max(1, round(self._bit_count / size * math.log(2)))
        self._bits = bytearray((self._bit_count + 7) // 8)
        self._insertions = 0

    def _positions(self, key: str) -> list[int]:
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        first = int.from_bytes(digest[:8], "little")
        second = int.from_bytes(digest[8:], "little") | 1
        bit_count = self._bit_count
        return [(first + i * second) % bit_count for i in range(self._hash_count)]

    def put(self, key: str) -> None:
        if self._insertions >= self.size:
            self.clear()
        bits = self._bits
        for position in self._positions(key):
            bits[position >> 3] |= 1 << (position & 7)
        self._insertions += 1

    def contains(self, key: str) -> bool:
        bits = self._bits
        return all(bits[position >> 3] & (1 << (position & 7)) for position in self._positions(key))

    def clear(self) -> None:
        self._bits = bytearray(len(self._bits))
        self._insertions = 0

    def __repr__(self) -> str:
        return f"BloomFilter(size={self.size}, fp_rate={self.fp_rate})"
