"""Reading the tiers after the leading local ones for a fetch, and back-filling the tiers before.

A fetch (``cacheme.fetch``) reads each deeper tier with one batch for its
keys; what a tier has is written into the local tiers before it at once, and
queued (``Backfill``) for the remote tiers before it, written once the
fetch's callers are answered. Under a refresh policy an expired entry is a
miss kept as its flight's fallback, and an entry due for renewal is listed.
What the lease tier answered instead of a lease (a value written meanwhile
by another process) is read the same way (``found_by_lease``).
"""

from __future__ import annotations

import itertools
import random
import time
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from cacheme import singleflight
from cacheme.chain import decode_found, read_remote, storage_failed, write_local, write_remotes
from cacheme.entry import Entry
from cacheme.refresh import Verdict, judge
from cacheme.storage import LocalStorage

if TYPE_CHECKING:
    from cacheme.config import NodeConfig

__all__ = ["Backfill", "Reading", "first_epoch", "found_by_lease", "read_remote_tiers", "write_backfills"]


class Backfill(NamedTuple):
    """Entries found in tier ``found_in``, still to be written into the remote tiers before it."""

    found_in: int
    entries: dict[str, Entry]
    bodies: dict[str, bytes]  # their serialized values, as read


class Reading(NamedTuple):
    """What reading the tiers after the leading local ones found."""

    missing: list[str]  # the keys no tier has (or only expired)
    backfills: list[Backfill]
    due: list[tuple[str, Entry]]  # keys answered from a tier whose entry is due for renewal


async def read_remote_tiers(config: NodeConfig, flights: Mapping[str, singleflight.Flight]) -> Reading:
    """Read the tiers after the leading local ones, one batch per tier; failures are misses.

    Each key found is written into the local tiers before it, then resolved.
    Under a refresh policy an expired entry is a miss kept as the flight's
    fallback, and an entry due for renewal is listed in ``due``.
    """
    tiers = config.tiers
    remaining = list(flights)
    reading = Reading([], [], [])
    for index in range(config.local_prefix, len(tiers)):
        if not remaining:
            break
        tier = tiers[index]
        bodies: dict[str, bytes] = {}
        if tier.local:
            try:
                found = typing.cast(LocalStorage, tier.storage).get_many_sync(remaining)
            except Exception as error:
                storage_failed(config, tier, "read", error, len(remaining))
                continue
        else:
            read = await read_remote(config, tier, remaining)
            if read is None:
                continue
            found, bodies = decode_found(config, tier, read)
        if config.policy is not None and found:
            found = _judge_found(config, flights, found, reading.due)
        elif bodies:
            # A remote copy outlives its expiry by the time its write took to reach the server.
            found = _unexpired(found, time.time())
        if not found:
            continue
        if index > 0:
            _fill_before(config, index, flights, found, bodies, reading.backfills)
        for key, entry in found.items():
            flights[key].resolve(entry.value, True)
        if len(found) == len(remaining):
            return reading
        remaining = list(itertools.filterfalse(found.__contains__, remaining))
    reading.missing.extend(remaining)
    return reading


def _judge_found(
    config: NodeConfig,
    flights: Mapping[str, singleflight.Flight],
    found: dict[str, Entry],
    due: list[tuple[str, Entry]],
) -> dict[str, Entry]:
    """The entries of ``found`` that answer their requests; expired ones become fallbacks, and
    those due for renewal are listed in ``due``."""
    assert config.policy is not None
    now = time.time()
    answering: dict[str, Entry] = {}
    for key, entry in found.items():
        verdict = judge(config.policy, entry, now, random.random)
        if verdict is Verdict.EXPIRED:
            flights[key].offer_fallback(entry)
            continue
        if verdict is Verdict.RENEW:
            due.append((key, entry))
        answering[key] = entry
    return answering


def first_epoch(flights: Mapping[str, singleflight.Flight], keys: Iterable[str]) -> int:
    """The earliest epoch among the flights of ``keys``: what a batch write of them is checked against."""
    return min((flights[key].epoch for key in keys), default=singleflight.epoch)


def _unexpired(found: dict[str, Entry], now: float) -> dict[str, Entry]:
    return {key: entry for key, entry in found.items() if entry.expires_at is None or entry.expires_at > now}


def _fill_before(
    config: NodeConfig,
    index: int,
    flights: Mapping[str, singleflight.Flight],
    found: dict[str, Entry],
    bodies: dict[str, bytes],
    backfills: list[Backfill],
) -> None:
    """Write what tier ``index`` had into the local tiers before it; queue it for the remote ones."""
    entries = {key: entry for key, entry in found.items() if not flights[key].stale}
    write_local(config, config.tiers[:index], entries, first_epoch(flights, entries))
    if entries and index > config.local_prefix:
        backfills.append(Backfill(index, entries, {key: bodies[key] for key in entries if key in bodies}))


async def write_backfills(config: NodeConfig, backfills: list[Backfill]) -> None:
    for backfill in backfills:
        await write_remotes(config, config.tiers[: backfill.found_in], backfill.entries, backfill.bodies)


def found_by_lease(
    config: NodeConfig,
    flights: Mapping[str, singleflight.Flight],
    found: dict[str, bytes],
    backfills: list[Backfill],
) -> list[str]:
    """Answer the flights of the keys the lease tier had (written by another process meanwhile), and
    fill the tiers before it; returns the keys whose bytes did not decode (to load here)."""
    if not found:
        return []
    tier = config.lease_tier
    assert tier is not None
    entries, bodies = decode_found(config, tier, found)
    index = config.tiers.index(tier)
    if index > 0:
        _fill_before(config, index, flights, entries, bodies, backfills)
    for key, entry in entries.items():
        flights[key].resolve(entry.value, True)
    return [key for key in found if key not in entries]
