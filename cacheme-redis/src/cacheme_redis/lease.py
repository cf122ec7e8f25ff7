"""``RedisLeases``: cacheme's leases (``Meta.lease``) in Redis and Redis Cluster.

A key's lease is its mark, written into the key itself with ``PX`` the lease's
length; each of the three operations is one Lua script on the key alone (so
on a cluster it runs on the key's node, and no CROSSSLOT error is possible):

- acquire: ``GET``; absent: ``SET mark PX ms``, answer 0; a mark: answer its
  ``PTTL``; else answer the value;
- write: ``SET value [PX ms]`` if the key still holds the mark, answer 1, else 0;
- release: ``DEL`` if the key still holds the mark.

The scripts of one call go out as one non-transactional pipeline (one round
trip per server; on a cluster each node gets its share at once). ``EVAL``,
not ``EVALSHA``: the server caches the compiled script by its digest, and no
``NOSCRIPT`` can follow a restart or a failover.

Notices (a lease ended) are PUBLISHed on ``cacheme:lease`` and received as the
invalidation bus's payloads are (``RedisBus``'s listening, on its own channel).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from cacheme.entry import LEASE_MARK
from cacheme.lease import Leases
from cacheme_redis.bus import RedisBus

__all__ = ["CHANNEL", "RedisLeases"]

CHANNEL = "cacheme:lease"

_ACQUIRE = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
if string.sub(value, 1, string.len(ARGV[3])) == ARGV[3] then
  local left = redis.call('PTTL', KEYS[1])
  if left < 1 then left = 1 end
  return left
end
return value
"""

_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""


def _expiry(ttl_ms: int | None) -> int | bytes:
    """The write script's expiry argument: milliseconds, or empty for none."""
    return b"" if ttl_ms is None else ttl_ms


class RedisLeases(RedisBus, Leases):
    """Leases held in the keys of a Redis storage (a server or a cluster)."""

    channel = CHANNEL

    async def acquire(self, marks: Mapping[str, bytes], ttl_ms: int) -> list[bytes | int]:
        calls = [(_ACQUIRE, key, (mark, ttl_ms, LEASE_MARK)) for key, mark in marks.items()]
        return cast("list[bytes | int]", await self._run(calls))

    async def write(
        self, values: Mapping[str, bytes], marks: Mapping[str, bytes], ttls: Mapping[str, int | None]
    ) -> int:
        calls = [(_WRITE, key, (marks[key], value, _expiry(ttls[key]))) for key, value in values.items()]
        return sum(cast("list[int]", await self._run(calls)))

    async def release(self, marks: Mapping[str, bytes]) -> None:
        await self._run([(_RELEASE, key, (mark,)) for key, mark in marks.items()])

    async def _run(self, calls: list[tuple[str, str, tuple[Any, ...]]]) -> list[Any]:
        """Each ``(script, key, arguments)`` as one EVAL, all in one pipeline; their answers, in order."""
        if not calls:
            return []
        commands = (await self.storage._state()).commands
        async with commands._slot():
            if len(calls) == 1:
                script, key, arguments = calls[0]
                return [await commands.client.execute_command("EVAL", script, 1, key, *arguments)]
            pipe = commands.client.pipeline(transaction=False)
            for script, key, arguments in calls:
                pipe.execute_command("EVAL", script, 1, key, *arguments)
            answers: list[Any] = await pipe.execute()
            return answers
