"""How the SQL storages write a batch: rows in one canonical order, a deadlock retried once.

Two writers that upsert the same keys in different orders can each hold a row
the other waits for: the database then kills one of them (a deadlock). When
every writer locks rows in the order of the unique column (``key_hash``), no
such cycle can form; a deadlock that still happens (an engine's gap locks, a
writer of another program) is retried once, since the database rolled the
whole write back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from cacheme_sql.base import key_hash

__all__ = ["Row", "retry_once_on_deadlock", "rows_in_lock_order"]

logger = logging.getLogger("cacheme.sql")

Row = tuple[bytes, str, bytes]
"""``(key_hash, cache_key, value)`` of one row to write."""


def rows_in_lock_order(items: Mapping[str, bytes]) -> list[Row]:
    """The rows of ``items``, sorted by ``key_hash``: the order every writer locks them in."""
    return sorted((key_hash(key), key, value) for key, value in items.items())


async def retry_once_on_deadlock(
    write: Callable[[], Awaitable[None]], is_deadlock: Callable[[BaseException], bool]
) -> None:
    """Await ``write()``; when it fails with an error ``is_deadlock`` accepts, await ``write()`` once more.

    ``write`` must be a whole transaction the database rolled back on a
    deadlock, so running it again writes every row exactly once. Any other
    error, or a second deadlock, is raised.
    """
    try:
        await write()
    except Exception as error:
        if not is_deadlock(error):
            raise
        logger.debug("cacheme-sql: a batch write hit a deadlock (%r); retrying it once", error)
        await write()
