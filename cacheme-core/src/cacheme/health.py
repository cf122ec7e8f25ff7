"""A storage's health: a deadline on each operation and a circuit breaker.

A cache read that takes longer than the source is worth nothing, and a
storage that stopped answering must not make every request wait for a socket
timeout. So every operation the engine sends a remote storage runs under a
deadline (``Health.read_timeout`` / ``write_timeout``), and each storage has a
circuit breaker:

- **closed**: operations go through. ``failures`` failures in a row (errors
  or deadlines passed), all within ``window`` seconds, open it.
- **open**: reads are misses and writes are skipped at once, with no I/O.
  After ``cool_down`` seconds it lets one operation through, as a probe:
- **half-open**: the probe's success closes the breaker, its failure opens it
  again for another ``cool_down``; meanwhile the other operations are skipped.

A breaker never raises to a caller; each change is logged once. The policy is
pure state over a clock that is passed in, so it is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal, TypeVar

from cacheme.errors import StorageConfigError

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Breaker", "Health", "HealthSnapshot", "within"]

logger = logging.getLogger("cacheme")

T = TypeVar("T")

State = Literal["closed", "open", "half-open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half-open"


def _seconds(name: str, value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise StorageConfigError(f"Health {name} must be seconds or a timedelta, got {value!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise StorageConfigError(f"Health {name} must be positive and finite, got {value!r}")
    return float(seconds)


@dataclass(frozen=True, init=False)
class Health:
    """How a storage's operations are bounded and when its breaker opens (times in seconds or timedelta).

    - ``read_timeout``: the longest a read (or delete) may take; past it the read is a miss
      and counts as a failure. Default 0.5 s: a cache read that takes longer is worth
      less than most sources. None: no deadline.
    - ``write_timeout``: the same for writes (sent after callers have their value). Default 2 s.
    - ``failures``: failures in a row that open the breaker (default 5) ...
    - ``window``: ... when they all happened within this many seconds (default 10).
    - ``cool_down``: how long the breaker stays open before one read goes through as a probe
      (default 0.25); writes wait for the breaker to close.
    - ``breaker``: False turns the breaker off (operations keep their deadlines).

    Times are kept as float seconds. ``Health.off()`` turns both off: no
    deadline, no breaker (the storage's own timeouts alone bound an operation).
    """

    read_timeout: float | None
    write_timeout: float | None
    failures: int
    window: float
    cool_down: float
    breaker: bool

    def __init__(
        self,
        read_timeout: float | timedelta | None = 0.5,
        write_timeout: float | timedelta | None = 2.0,
        failures: int = 5,
        window: float | timedelta = 10.0,
        cool_down: float | timedelta = 0.25,
        breaker: bool = True,
    ) -> None:
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
            raise StorageConfigError(f"Health failures must be an int >= 1, got {failures!r}")
        if not isinstance(breaker, bool):
            raise StorageConfigError(f"Health breaker must be True or False, got {breaker!r}")
        settings = {
            "read_timeout": None if read_timeout is None else _seconds("read_timeout", read_timeout),
            "write_timeout": None if write_timeout is None else _seconds("write_timeout", write_timeout),
            "failures": failures,
            "window": _seconds("window", window),
            "cool_down": _seconds("cool_down", cool_down),
            "breaker": breaker,
        }
        for name, value in settings.items():
            object.__setattr__(self, name, value)

    @classmethod
    def off(cls) -> Health:
        """No deadline and no breaker."""
        return cls(read_timeout=None, write_timeout=None, breaker=False)


@dataclass(frozen=True)
class HealthSnapshot:
    """What a storage's breaker says now (``cacheme.storage_health(name)``)."""

    state: State
    consecutive_failures: int
    opened_count: int  # times the breaker opened
    skipped_count: int  # operations skipped while it was open
    failure_count: int  # operations that failed (errors and deadlines passed)


class Breaker:
    """One storage's circuit breaker. Thread-safe; ``clock`` returns seconds (monotonic).

    ``name`` is how the logs call the storage (the registry sets its first
    registered name); until then ``describe()`` is called for it.
    """

    def __init__(
        self,
        health: Health,
        describe: Callable[[], str] = lambda: "storage",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = health
        self.name: str | None = None
        self._describe = describe
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = CLOSED
        self._streak = 0  # failures in a row
        self._streak_started = 0.0
        self._opened_at = 0.0
        self._probing = False
        self.opened_count = 0
        self.skipped_count = 0
        self.failure_count = 0

    @property
    def state(self) -> State:
        return self._state

    def allow(self) -> bool:
        """Whether a read may go to the storage now (an open breaker lets one probe through)."""
        if self._state == CLOSED or not self.health.breaker:
            return True
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.health.cool_down:
                self._change(HALF_OPEN)
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            self.skipped_count += 1
            return False

    def allow_write(self) -> bool:
        """Whether a write may go to the storage now: only while the breaker is closed.

        Reads are the probes: a write's longer deadline would keep a storage
        that is back closed off for that much longer.
        """
        if self._state == CLOSED or not self.health.breaker:
            return True
        with self._lock:
            self.skipped_count += 1
        return False

    def record_success(self) -> None:
        """An operation the breaker allowed succeeded."""
        if self._state == CLOSED and not self._streak:
            return
        with self._lock:
            self._streak = 0
            self._probing = False
            if self._state != CLOSED:
                self._change(CLOSED)

    def record_failure(self) -> bool:
        """An operation the breaker allowed failed or passed its deadline. True if that opened the breaker."""
        with self._lock:
            was_open = self._state == OPEN
            self.failure_count += 1
            now = self._clock()
            self._probing = False
            if self._state == HALF_OPEN:
                self._open(now)
                return True
            if self._streak == 0 or now - self._streak_started > self.health.window:
                self._streak, self._streak_started = 0, now
            self._streak += 1
            if self.health.breaker and self._state == CLOSED and self._streak >= self.health.failures:
                self._open(now)
            return self._state == OPEN and not was_open

    def record_abandoned(self) -> None:
        """An allowed operation ended without an outcome (cancelled): the probe slot is free again."""
        if self._probing:
            with self._lock:
                self._probing = False

    def _open(self, now: float) -> None:
        self._opened_at = now
        self.opened_count += 1
        self._change(OPEN)

    def _change(self, state: State) -> None:
        """Move to ``state`` and log it (lock held): a warning when the storage is given up and when it
        answers again; the probes in between (one per cool-down) at debug level."""
        previous, self._state = self._state, state
        name = self.name or self._describe()
        if state == OPEN and previous == CLOSED:
            logger.warning(
                "cacheme: storage %r breaker closed -> open after %d failure(s) in a row: reads are misses "
                "and writes are skipped, with one probe every %.3gs",
                name,
                self._streak,
                self.health.cool_down,
            )
        elif state == CLOSED:
            logger.warning("cacheme: storage %r breaker %s -> closed: it answers again", name, previous)
        else:
            logger.debug("cacheme: storage %r breaker %s -> %s", name, previous, state)
        if state == CLOSED:
            self._streak = 0

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(
                self._state, self._streak, self.opened_count, self.skipped_count, self.failure_count
            )


async def within(seconds: float | None, operation: Coroutine[Any, Any, T], at_once: bool = False) -> T:
    """``await operation``, raising ``TimeoutError`` once ``seconds`` have passed (None: no deadline).

    At the deadline the operation is cancelled but not waited for: some
    drivers (asyncpg) answer a cancel by talking to the server again, which a
    server that stopped answering never lets finish. The abandoned operation
    ends in the background, bounded by the driver's own timeouts. With
    ``at_once`` (a storage whose operations end as soon as they are cancelled,
    ``BaseStorage.cancels_at_once``) the operation runs in the caller's task
    instead, and is cancelled there: no task, and no loop turn, of its own.
    """
    if seconds is None:
        return await operation
    if at_once:
        return await _within_here(seconds, operation)
    task = asyncio.ensure_future(operation)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except BaseException:  # the caller was cancelled: so is its operation
        _abandon(task)
        raise
    if not done:
        _abandon(task)
        raise TimeoutError(f"no answer within {seconds:g}s")
    return task.result()


async def _within_here(seconds: float, operation: Coroutine[Any, Any, T]) -> T:
    """``await operation`` in this task, cancelled here once ``seconds`` have passed (a TimeoutError)."""
    task = asyncio.current_task()
    assert task is not None
    deadline = _Deadline(task)
    timer = asyncio.get_running_loop().call_later(seconds, deadline.expire, context=_BARE_CONTEXT)
    try:
        return await operation
    except asyncio.CancelledError:
        if not deadline.expired:
            raise
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+: take our own cancel back
        if uncancel is not None and uncancel() > 0:
            raise  # the caller was cancelled too
        raise TimeoutError(f"no answer within {seconds:g}s") from None
    finally:
        timer.cancel()


# The context a deadline's timer runs in: it reads and sets no context variable.
_BARE_CONTEXT = contextvars.Context()


class _Deadline:
    """Cancels its task when it expires (the timer of ``_within_here``)."""

    __slots__ = ("expired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self.task.cancel()


def _abandon(task: asyncio.Future[Any]) -> None:
    task.cancel()
    task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read an abandoned operation's outcome, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
