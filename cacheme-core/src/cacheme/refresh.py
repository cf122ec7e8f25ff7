"""When a hit is served as it is, renewed in the background, or treated as expired.

Pure functions of an entry, the time and (for XFetch) a random number: no
I/O, no clock of their own, so that tests give both.

- ``refresh_after``: an entry loaded longer ago than this is served and
  renewed in the background (one load per key per event loop).
- ``early_refresh`` (XFetch's β; Vattani, Chierichetti and Lowenstein,
  "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015): a hit
  renews early when ``now - load_time * β * ln(u) >= expires_at``, ``u``
  uniform in (0, 1]: the nearer the expiry and the longer the load, the likelier.
- ``stale_if_error``: tiers keep an entry this long past its expiry; such an
  entry is expired for everything but one use: answering a request whose
  load failed, instead of the error.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cacheme.entry import Entry
from cacheme.errors import NodeDefinitionError

__all__ = ["Policy", "Verdict", "judge", "stale_usable"]


class Verdict(enum.Enum):
    FRESH = "fresh"  # serve it
    RENEW = "renew"  # serve it and reload it in the background
    EXPIRED = "expired"  # a miss; kept only as the stale answer to a failed load


class Policy:
    """A node's refresh options, in seconds. Built only when at least one is set."""

    __slots__ = ("early_refresh", "refresh_after", "stale_if_error")

    def __init__(
        self, refresh_after: float | None, early_refresh: float | None, stale_if_error: float | None
    ) -> None:
        self.refresh_after = refresh_after
        self.early_refresh = early_refresh
        self.stale_if_error = stale_if_error

    @classmethod
    def from_meta(cls, meta: Any, name: str) -> Policy | None:
        """The policy of a node's ``Meta``, or ``None`` when it sets none of the three options.

        Raises ``NodeDefinitionError`` for a value of the wrong type or sign.
        """
        refresh_after = _seconds(meta.refresh_after, f"{name}.Meta.refresh_after")
        stale_if_error = _seconds(meta.stale_if_error, f"{name}.Meta.stale_if_error")
        beta = meta.early_refresh
        if beta is not None:
            if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (0 < beta < math.inf):
                raise NodeDefinitionError(
                    f"{name}.Meta.early_refresh must be a positive number (XFetch's beta; 1.0 is the "
                    f"paper's default) or None, got {beta!r}"
                )
            beta = float(beta)
        if refresh_after is None and beta is None and stale_if_error is None:
            return None
        return cls(refresh_after, beta, stale_if_error)

    def __repr__(self) -> str:
        return (
            f"Policy(refresh_after={self.refresh_after!r}, early_refresh={self.early_refresh!r}, "
            f"stale_if_error={self.stale_if_error!r})"
        )


def _seconds(value: object, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise NodeDefinitionError(f"{what} must be a positive timedelta or None, got {value!r}")
    return value.total_seconds()


def judge(policy: Policy, entry: Entry, now: float, uniform: Callable[[], float]) -> Verdict:
    """What a hit on ``entry`` at ``now`` does. ``uniform()`` is in [0, 1) (``random.random``).

    An entry of unknown age (written without a header) is renewed when
    ``refresh_after`` is set: its reload gives it an age.
    """
    expires_at = entry.expires_at
    if expires_at is not None and now >= expires_at:
        return Verdict.EXPIRED
    after = policy.refresh_after
    if after is not None:
        loaded_at = entry.loaded_at
        if loaded_at is None or now - loaded_at >= after:
            return Verdict.RENEW
    beta = policy.early_refresh
    if (
        beta is not None
        and expires_at is not None
        and now - entry.load_time * beta * math.log(1.0 - uniform()) >= expires_at
    ):
        return Verdict.RENEW
    return Verdict.FRESH


def stale_usable(entry: Entry, now: float, stale_if_error: float | None) -> bool:
    """Whether ``entry`` may answer a request whose load failed: unexpired, or expired less than
    ``stale_if_error`` seconds ago."""
    expires_at = entry.expires_at
    if expires_at is None:
        return True
    return now < expires_at + (stale_if_error or 0.0)
