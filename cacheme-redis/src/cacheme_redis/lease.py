"""``RedisLeases``: cacheme's leases (``Meta.lease``) in Redis and Redis Cluster.

A key's lease is its mark, written into the key itself with ``PX`` the lease's
length. Each of the three operations is a Lua script that handles every key it
is given, each key atomically:

- acquire: ``GET``; absent: ``SET mark PX ms``, answer 0; a mark: answer its
  ``PTTL``; else answer the value;
- write: ``SET value [PX ms]`` where the key still holds the mark; answer how many;
- release: ``DEL`` where the key still holds the mark.

A call sends one script per hash slot (a script may only touch keys of one
slot on a cluster; a single server has one group), all in one
non-transactional pipeline: one round trip per server, each cluster node its
share at once, and one command for many keys rather than one per key (at
most ``SCRIPT_KEYS``: a script runs alone on its server).
``EVAL``, not ``EVALSHA``: the server caches the compiled script by its
digest, and no ``NOSCRIPT`` can follow a restart or a failover.

Notices (a lease ended) are PUBLISHed on ``cacheme:lease`` and received as the
invalidation bus's payloads are (``RedisBus``'s listening, on its own channel).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cacheme.entry import LEASE_MARK
from cacheme.lease import Leases
from cacheme_redis.bus import RedisBus

__all__ = ["CHANNEL", "RedisLeases"]

CHANNEL = "cacheme:lease"
# Keys per script call: a larger call is split, so that no script keeps the server busy for long.
SCRIPT_KEYS = 1000

# ARGV: the lease's milliseconds, the mark's prefix, then each key's mark.
_ACQUIRE = """
local answers = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if not value then
    redis.call('SET', key, ARGV[i + 2], 'PX', ARGV[1])
    answers[i] = 0
  elseif string.sub(value, 1, string.len(ARGV[2])) == ARGV[2] then
    local left = redis.call('PTTL', key)
    if left < 1 then left = 1 end
    answers[i] = left
  else
    answers[i] = value
  end
end
return answers
"""

# ARGV: for each key, its mark, its value and its milliseconds ('' for no expiry).
_WRITE = """
local written = 0
for i, key in ipairs(KEYS) do
  local at = 3 * i - 2
  if redis.call('GET', key) == ARGV[at] then
    if ARGV[at + 2] == '' then
      redis.call('SET', key, ARGV[at + 1])
    else
      redis.call('SET', key, ARGV[at + 1], 'PX', ARGV[at + 2])
    end
    written = written + 1
  end
end
return written
"""

# ARGV: each key's mark.
_RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then
    redis.call('DEL', key)
  end
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
        keys = list(marks)
        answers: dict[str, bytes | int] = {}
        groups = await self._groups(keys)
        replies = await self._run(
            [(_ACQUIRE, group, [ttl_ms, LEASE_MARK, *(marks[key] for key in group)]) for group in groups]
        )
        for group, reply in zip(groups, replies, strict=True):
            answers.update(zip(group, reply, strict=True))
        return [answers[key] for key in keys]

    async def write(
        self, values: Mapping[str, bytes], marks: Mapping[str, bytes], ttls: Mapping[str, int | None]
    ) -> int:
        calls = []
        for group in await self._groups(list(values)):
            arguments: list[Any] = []
            for key in group:
                arguments += (marks[key], values[key], _expiry(ttls[key]))
            calls.append((_WRITE, group, arguments))
        return sum(await self._run(calls))

    async def release(self, marks: Mapping[str, bytes]) -> None:
        groups = await self._groups(list(marks))
        await self._run([(_RELEASE, group, [marks[key] for key in group]) for group in groups])

    async def _groups(self, keys: list[str]) -> list[list[str]]:
        """``keys`` by hash slot (one group on a single server), at most SCRIPT_KEYS a group."""
        if not keys:
            return []
        by_slot = (await self.storage._state()).commands._by_slot(keys)
        return [group[at : at + SCRIPT_KEYS] for group in by_slot for at in range(0, len(group), SCRIPT_KEYS)]

    async def _run(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Each ``(script, keys, arguments)`` as one EVAL, all in one pipeline; their answers, in order."""
        if not calls:
            return []
        commands = (await self.storage._state()).commands
        async with commands._slot():
            if len(calls) == 1:
                script, keys, arguments = calls[0]
                return [await commands.client.execute_command("EVAL", script, len(keys), *keys, *arguments)]
            pipe = commands.client.pipeline(transaction=False)
            for script, keys, arguments in calls:
                pipe.execute_command("EVAL", script, len(keys), *keys, *arguments)
            answers: list[Any] = await pipe.execute()
            return answers
