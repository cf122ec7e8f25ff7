"""cacheme.health: the circuit breaker's states on a fake clock, and Health's validation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme.health import CLOSED, HALF_OPEN, OPEN, Breaker, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(**settings: Any) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker(Health(**settings), clock=clock), clock


def state(subject: Breaker) -> str:
    return subject.state


def test_failures_in_a_row_within_the_window_open_it() -> None:
    subject, _ = breaker(failures=3, window=10.0, cool_down=1.0)
    for _ in range(2):
        assert subject.allow()
        subject.record_failure()
    assert state(subject) == CLOSED
    subject.record_failure()
    assert state(subject) == OPEN
    assert [subject.allow() for _ in range(5)] == [False] * 5
    snapshot = subject.snapshot()
    assert (snapshot.state, snapshot.opened_count, snapshot.skipped_count, snapshot.failure_count) == (
        "open",
        1,
        5,
        3,
    )


def test_a_success_or_the_window_passing_starts_the_count_again() -> None:
    subject, clock = breaker(failures=3, window=10.0)
    subject.record_failure()
    subject.record_failure()
    subject.record_success()
    subject.record_failure()
    subject.record_failure()
    assert state(subject) == CLOSED
    clock.now += 11  # the streak began more than a window ago
    subject.record_failure()
    subject.record_failure()
    assert state(subject) == CLOSED
    subject.record_failure()
    assert state(subject) == OPEN


@pytest.mark.parametrize(
    ("probe_succeeds", "expected"),
    [(True, CLOSED), (False, OPEN)],
)
def test_after_the_cool_down_one_probe_decides(probe_succeeds: bool, expected: str) -> None:
    subject, clock = breaker(failures=1, cool_down=2.0)
    subject.record_failure()
    clock.now += 1.9
    assert not subject.allow()
    clock.now += 0.2
    assert subject.allow()  # the probe
    assert state(subject) == HALF_OPEN
    assert not subject.allow()  # only one at a time
    if probe_succeeds:
        subject.record_success()
    else:
        subject.record_failure()
    assert state(subject) == expected
    assert subject.allow() is probe_succeeds


def test_writes_wait_for_the_breaker_to_close_reads_probe() -> None:
    subject, clock = breaker(failures=1, cool_down=1.0)
    assert subject.allow_write()
    subject.record_failure()
    clock.now += 1.0
    assert not subject.allow_write()  # half-open or open: writes are skipped
    assert subject.allow()  # a read is the probe
    subject.record_success()
    assert subject.allow_write()


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    subject, clock = breaker(failures=1, cool_down=1.0)
    subject.record_failure()
    clock.now += 1.0
    assert subject.allow()
    subject.record_abandoned()
    assert subject.allow()


def test_a_breaker_turned_off_never_opens() -> None:
    subject, _ = breaker(failures=1, breaker=False)
    for _ in range(10):
        subject.record_failure()
        assert subject.allow()
    assert state(subject) == CLOSED


def test_health_settings_are_checked_and_normalised() -> None:
    health = Health(read_timeout=timedelta(milliseconds=100), cool_down=timedelta(seconds=2))
    assert (health.read_timeout, health.cool_down) == (0.1, 2.0)
    assert Health.off() == Health(read_timeout=None, write_timeout=None, breaker=False)
    for bad in ({"read_timeout": 0}, {"failures": 0}, {"window": -1}, {"cool_down": float("inf")}):
        with pytest.raises(cacheme.StorageConfigError):
            Health(**bad)
    with pytest.raises(cacheme.StorageConfigError, match="health"):
        cacheme.Storage("local://lru", size=1, health="fast")  # type: ignore[arg-type]


def test_storage_takes_its_health_and_reports_it() -> None:
    storage = cacheme.Storage("local://lru", size=10, health=Health(failures=2))
    assert storage.health.failures == 2
    assert storage.breaker.state == CLOSED
