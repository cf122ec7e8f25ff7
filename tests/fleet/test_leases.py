"""Leases (``Meta.lease``) across real processes: on the shared Redis and on a Redis Cluster.

Each member (tests/fleet/lease_member.py) is a process of its own with its own event loop and
a chain [local, shared]; the shared tier holds the leases. The "database" is the shared Redis:
a load counts itself there (``INCR {prefix}:loads:{id}``), so the loads are counted fleet-wide,
and returns ``"{id}:{member}:{n}"``: who loaded the value, as the key's n-th load. The test
drives the members through their stdin (commands run concurrently in each member) and reads
their answers and events (a load starting) on their stdout.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

import cacheme
from cacheme.lease import MARK
from tests.fixtures.proxy import TcpProxy
from tests.fixtures.redis_servers import SHARED_HOST, SHARED_PORT, RedisClusterProcesses, RedisServer
from tests.fixtures.sql_servers import POSTGRES_URL, drop_table, raw_postgres

ROOT = Path(__file__).resolve().parents[2]
SOURCE = f"redis://{SHARED_HOST}:{SHARED_PORT}/0"
# Bounded deadlines for a lease tier that dies: a read (or a lease asked for) is given up
# after 0.5 s, a write too; three failures open the breaker.
HEALTH = {"read_timeout": 0.5, "write_timeout": 0.5, "failures": 3, "window": 10.0, "cool_down": 0.5}
# How much later than it is due a member may answer on a loaded 2-core machine.
SLACK = 2.0


Line = dict[str, Any]


class Member:
    """A member process: commands go to its stdin, its JSON lines are read by a thread."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fleet.lease_member", json.dumps(spec)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[Line | None] = queue.Queue()
        self._backlog: list[Line] = []  # lines read but not asked for yet
        self._errors: list[str] = []
        self._tags = 0
        self.killed = False
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            self._lines.put(json.loads(text))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for text in self.process.stderr:
            self._errors.append(text.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self._errors)

    def expect(self, match: Callable[[Line], bool], timeout: float) -> Line:
        """The first line (read or to come, within ``timeout`` s) that ``match``es."""
        for index, earlier in enumerate(self._backlog):
            if match(earlier):
                return self._backlog.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: nothing expected in {timeout} s; stderr: {self.stderr}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)
                time.sleep(0.1)  # let the stderr reader catch up
                raise AssertionError(f"{self.name} exited ({self.process.poll()}); stderr: {self.stderr}")
            if match(line):
                return line
            self._backlog.append(line)

    def ready(self) -> None:
        self.expect(lambda line: line.get("event") == "ready", 30)

    def loading(self, item_id: int, timeout: float = 10) -> Line:
        """The event of this member's load of ``item_id`` starting."""
        return self.expect(lambda line: line.get("event") == "loading" and line["id"] == item_id, timeout)

    def send(self, op: str, **arguments: Any) -> str:
        """Send a command; its tag, to wait for its answer with ``reply``."""
        self._tags += 1
        tag = f"{op}-{self._tags}"
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"tag": tag, "op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        return tag

    def outcome(self, tag: str, timeout: float = 30) -> Line:
        """The answer to a command, an error included."""
        return self.expect(lambda line: line.get("tag") == tag, timeout)

    def reply(self, tag: str, timeout: float = 30) -> Line:
        """The answer to a command, which must not have failed."""
        answer = self.outcome(tag, timeout)
        assert "error" not in answer, f"{self.name}: {answer['error']}; stderr: {self.stderr}"
        return answer

    def call(self, op: str, *, wait: float = 30, **arguments: Any) -> Line:
        """Send a command and wait (at most ``wait`` s) for its answer."""
        return self.reply(self.send(op, **arguments), wait)

    def stats(self, settle: float | None = None) -> Line:
        """``{"stats": ..., "in_flight": ...}``; with ``settle``, once nothing is in flight."""
        return self.call("stats", settle=settle)

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        self.killed = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def finish(self, logged: tuple[str, ...] = ()) -> None:
        """Ask the member to exit: it must, within 10 s, with status 0, having written nothing to
        stderr but lines that start with one of ``logged``. Once: a member finished already is not
        asked again."""
        if self.process.stdin is None or self.process.stdin.closed:
            return
        self.call("exit")
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=10) == 0, self.stderr
        for reader in self._readers:
            reader.join(5)
        unexpected = [line for line in self._errors if not line.startswith(logged)]
        assert unexpected == [], self.stderr

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@dataclass
class Fleet:
    shared_url: str
    shared_options: dict[str, Any]
    prefix: str
    tier: redis.Redis | redis.cluster.RedisCluster | None  # a client of the cache (and lease) tier
    source: redis.Redis  # the "database"
    members: list[Member] = field(default_factory=list)
    table: str | None = None  # the lease tier is this PostgreSQL table (``tier`` is None)

    def member(self, name: str, *, lease: float | None, load: float, **more: Any) -> Member:
        """Start a member: leases of ``lease`` seconds (None: none), loads that take ``load`` seconds;
        ``more``: the rest of its spec (``load_all``, ``fail_ids``)."""
        spec = {
            "name": name,
            "prefix": self.prefix,
            "source": SOURCE,
            "shared_url": self.shared_url,
            "shared_options": self.shared_options,
            "lease_seconds": lease,
            "load_seconds": load,
            **more,
        }
        started = Member(spec)
        self.members.append(started)
        return started

    def key(self, item_id: int) -> str:
        return f"{self.prefix}:item:{item_id}:v1"

    def raw(self, item_id: int) -> bytes | None:
        """What the shared tier holds for ``item_id``."""
        return self.entry(item_id)[0]

    def entry(self, item_id: int) -> tuple[bytes | None, float]:
        """What the shared tier holds for ``item_id`` and the seconds it has left (inf: none)."""
        key = self.key(item_id)
        if self.table is not None:
            return asyncio.run(_postgres_entry(self.table, key))
        assert self.tier is not None
        found = self.tier.get(key)
        assert found is None or isinstance(found, bytes)
        left = int(self.tier.pttl(key))
        return found, math.inf if left < 0 else left / 1000

    def loads(self, ids: list[int]) -> list[int]:
        """How many times each of ``ids`` was loaded, fleet-wide."""
        counters = self.source.mget([f"{self.prefix}:loads:{i}" for i in ids])
        return [int(counter or 0) for counter in counters]

    def finish(self, logged: tuple[str, ...] = ()) -> None:
        """Every member not killed exits cleanly."""
        for member in self.members:
            if not member.killed:
                member.finish(logged)


async def _postgres_entry(table: str, key: str) -> tuple[bytes | None, float]:
    connection = await raw_postgres()
    try:
        row = await connection.fetchrow(
            f"SELECT value, extract(epoch FROM expire - now())::float8 FROM {table} "
            "WHERE cache_key = $1 AND (expire IS NULL OR expire > now())",
            key,
        )
    finally:
        await connection.close()
    if row is None:
        return None, 0.0
    return bytes(row[0]), math.inf if row[1] is None else float(row[1])


def _delete_prefixed(client: redis.Redis, prefix: str) -> None:
    """Delete the keys of ``prefix`` on one server (one DEL each: a cluster node refuses a DEL of
    keys in several slots)."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.delete(key)
        pipe.execute()


@pytest.fixture
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """A fleet on the shared Redis ("redis", the default), the Redis Cluster ("redis-cluster") or a
    PostgreSQL table of its own ("postgresql"); the source and its load counters are in Redis."""
    kind = getattr(request, "param", "redis")
    prefix = f"lease-{uuid.uuid4().hex[:8]}"
    source = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
    cleaned = [source]
    table: str | None = None
    tier: redis.Redis | redis.cluster.RedisCluster | None
    if kind == "postgresql":
        table = f"lease_fleet_{uuid.uuid4().hex[:12]}"
        created = cacheme.Storage(POSTGRES_URL, table=table)  # made once here, not by four members at once
        asyncio.run(_create(created))
        tier = None
        made = Fleet(POSTGRES_URL, {"table": table, "create_table": False}, prefix, tier, source, table=table)
    elif kind == "redis-cluster":
        cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
        cleaned += [server.client() for server in cluster.masters]
        tier = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.masters[0].port)
        made = Fleet(cluster.url, {"cluster": True}, prefix, tier, source)
    else:
        tier = redis.Redis(host=SHARED_HOST, port=SHARED_PORT)
        made = Fleet(SOURCE, {}, prefix, tier, source)
    try:
        yield made
    finally:
        for member in made.members:
            member.stop()
        for client in cleaned:
            _delete_prefixed(client, prefix)
            client.close()
        if tier is not None:
            tier.close()
        if table is not None:
            asyncio.run(drop_table(POSTGRES_URL, table))


async def _create(storage: cacheme.BaseStorage) -> None:
    await storage.connect()
    await storage.close()


BOTH = pytest.mark.parametrize("fleet", ["redis", "redis-cluster"], indirect=True)


def eventually(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


def waiting(member: Member, count: int = 1) -> bool:
    """Whether ``member`` has waited for ``count`` keys another process holds."""
    return bool(member.stats()["stats"]["lease_wait_count"] >= count)


def parts(value: str) -> tuple[int, str, int]:
    """``(id, loaded by, n-th load)`` of a member's value."""
    item_id, name, n = value.split(":")
    return int(item_id), name, int(n)


def assert_holds(fleet: Fleet, item_id: int, value: str) -> None:
    """The shared tier holds ``value`` for ``item_id`` (an entry, not a lease's mark)."""
    raw = fleet.raw(item_id)
    assert raw is not None and not raw.startswith(MARK), raw
    assert raw.endswith(value.encode()), raw  # msgpack keeps a short string as it is, after its header
    # It expires with the cache's TTL (600 s), not with the lease it replaced.
    assert fleet.entry(item_id)[1] > 60


# ---------------------------------------------------------------- one load per key, fleet-wide


def many_gets_at_once(fleet: Fleet, lease: float | None) -> tuple[list[Member], list[Line], list[Line]]:
    """Four members, each getting the keys 0..199 ten times each and the keys 100..299 with a
    get_all, all at once, started together; their answers and their stats. Two members' node
    class has a load_all of its own (their get_all loads in batches), the others' has not."""
    members = [fleet.member(f"m{i}", lease=lease, load=0.05, load_all=i < 2) for i in range(4)]
    for member in members:
        member.ready()
    at = time.time() + 0.5  # the barrier: every member starts then
    tags = [member.send("get", ids=MANY, all=EVERY, at=at) for member in members]
    replies = [member.reply(tag, 60) for member, tag in zip(members, tags, strict=True)]
    return members, replies, [member.stats(settle=10) for member in members]


MANY = [i % 200 for i in range(2000)]  # each key of 0..199 ten times
EVERY = list(range(100, 300))  # half of them wanted by the gets too


@pytest.mark.parametrize("fleet", ["redis", "redis-cluster", "postgresql"], indirect=True)
def test_four_processes_load_every_missing_key_once(fleet: Fleet) -> None:
    lease = 10.0
    members, replies, stats = many_gets_at_once(fleet, lease)
    keys = list(range(300))
    assert fleet.loads(keys) == [1] * 300  # every key loaded once, fleet-wide
    values: dict[int, str] = {}
    for reply in replies:
        assert reply["timed_out"] == 0
        # The waiters were told (a notice), not left to wait for the leases to expire.
        assert reply["done"] - reply["started"] < lease / 2
        got = [*zip(MANY, reply["values"], strict=True), *zip(EVERY, reply["all"], strict=True)]
        for item_id, value in got:
            assert values.setdefault(item_id, value) == value  # the same value everywhere
            assert parts(value)[0] == item_id and parts(value)[2] == 1
    assert sorted(values) == keys
    for member, counted in zip(members, stats, strict=True):
        loaded_here = sum(1 for value in values.values() if parts(value)[1] == member.name)
        assert counted["stats"]["load_count"] == counted["stats"]["lease_count"] == loaded_here
        assert counted["stats"]["lease_fail_open_count"] == counted["stats"]["lease_fenced_count"] == 0
        assert counted["stats"]["storage_error_count"] == 0
        assert counted["in_flight"] == 0
    assert sum(counted["stats"]["lease_wait_count"] for counted in stats) > 0  # some waited for others
    for item_id in keys:
        assert_holds(fleet, item_id, values[item_id])
    fleet.finish()


def test_without_leases_the_same_run_loads_keys_more_than_once(fleet: Fleet) -> None:
    # The control: the check above fails without leases.
    many_gets_at_once(fleet, None)
    counters = fleet.loads(list(range(300)))
    assert sum(counters) > 300 and max(counters) > 1
    fleet.finish()


# ---------------------------------------------------------------- a holder that dies


@pytest.mark.parametrize("fleet", ["redis", "redis-cluster", "postgresql"], indirect=True)
def test_a_holder_killed_mid_load_is_taken_over_when_its_lease_expires(fleet: Fleet) -> None:
    lease = 1.5
    holder = fleet.member("a", lease=lease, load=60.0)
    others = [fleet.member("b", lease=lease, load=0.05), fleet.member("c", lease=lease, load=0.05)]
    for member in (holder, *others):
        member.ready()
    holder.send("get", ids=[7])
    loading = holder.loading(7)
    assert loading["n"] == 1
    tags = [member.send("get", ids=[7]) for member in others]
    eventually(lambda: all(waiting(member) for member in others), 5, "b and c wait for a's lease")
    killed_at = time.time()
    holder.kill()
    replies = [member.reply(tag, lease + 10) for member, tag in zip(others, tags, strict=True)]

    expires = loading["at"] + lease
    for reply in replies:
        assert reply["done"] >= killed_at
        assert reply["done"] >= expires - 0.25  # they waited the dead holder's lease out
        assert reply["done"] <= expires + SLACK
    # The one that did not load was told by the other's notice, not by the new lease's expiry.
    assert abs(replies[0]["done"] - replies[1]["done"]) < lease / 2
    assert replies[0]["values"] == replies[1]["values"]
    item_id, loaded_by, n = parts(replies[0]["values"][0])
    assert (item_id, n) == (7, 2) and loaded_by in ("b", "c")
    assert fleet.loads([7]) == [2]  # a's load, then one more
    stats = [member.stats(settle=5)["stats"] for member in others]
    assert sum(counted["load_count"] for counted in stats) == 1
    assert sum(counted["lease_count"] for counted in stats) == 1
    assert_holds(fleet, 7, replies[0]["values"][0])
    fleet.finish()


def test_a_holder_that_exits_mid_load_gives_its_lease_back(fleet: Fleet) -> None:
    # asyncio.run's shutdown cancels the load: the lease is given back, not waited out.
    lease = 10.0
    holder = fleet.member("a", lease=lease, load=60.0)
    other = fleet.member("b", lease=lease, load=0.05)
    for member in (holder, other):
        member.ready()
    holder.send("get", ids=[9])
    loading = holder.loading(9)
    tag = other.send("get", ids=[9])
    eventually(lambda: waiting(other), 5, "b waits for a's lease")
    holder.finish()  # exits at once, status 0, nothing on stderr
    reply = other.reply(tag, lease)
    assert reply["done"] - loading["at"] < lease / 2  # told at a's exit, not at its lease's end
    assert parts(reply["values"][0])[:2] == (9, "b")
    assert fleet.loads([9]) == [2]
    fleet.finish()


@BOTH
def test_a_failed_load_gives_the_lease_back_and_a_waiter_loads_at_once(fleet: Fleet) -> None:
    lease = 10.0
    failing = fleet.member("a", lease=lease, load=0.5, fail_ids=[8])
    others = [fleet.member("b", lease=lease, load=0.05), fleet.member("c", lease=lease, load=0.05)]
    for member in (failing, *others):
        member.ready()
    held = failing.send("get", ids=[8])
    loading = failing.loading(8)
    tags = [member.send("get", ids=[8]) for member in others]
    eventually(lambda: all(waiting(member) for member in others), 5, "b and c wait for a's lease")
    failed = failing.outcome(held, 10)
    assert "the load of 8 failed" in failed["error"]  # a's caller gets a's error
    replies = [member.reply(tag, lease + 10) for member, tag in zip(others, tags, strict=True)]
    for reply in replies:
        # Told by a's notice: well before a's lease would have expired.
        assert reply["done"] <= loading["at"] + 0.5 + SLACK < loading["at"] + lease
    assert replies[0]["values"] == replies[1]["values"]
    item_id, loaded_by, n = parts(replies[0]["values"][0])
    assert (item_id, n) == (8, 2) and loaded_by in ("b", "c")
    assert fleet.loads([8]) == [2]
    assert failing.stats(settle=5)["stats"]["lease_fenced_count"] == 0
    assert_holds(fleet, 8, replies[0]["values"][0])
    fleet.finish()


# ---------------------------------------------------------------- a waiter cancelled


def test_a_cancelled_waiter_leaves_nothing_stuck_and_the_next_get_has_the_holders_value(fleet: Fleet) -> None:
    holder = fleet.member("a", lease=5.0, load=1.5)
    waiter = fleet.member("b", lease=5.0, load=0.05)
    holder.ready()
    waiter.ready()
    held = holder.send("get", all=[3, 4])  # get_all: a's flights of 3 and 4 hold their leases
    holder.loading(3)
    holder.loading(4)
    # A get and a get_all waiting for a's leases, given up after 0.3 s (asyncio.wait_for).
    gave_up = waiter.call("get", ids=[3], timeout=0.3)
    assert gave_up["values"] == [None] and gave_up["timed_out"] == 1
    gave_up = waiter.call("get", all=[3, 4], timeout=0.3)
    assert gave_up["all"] is None
    assert waiting(waiter, 2)
    # Thirty gets of 3, each cancelled at a random point (before or after a's load ends).
    delays = [0.0, *(random.uniform(0.0, 2.0) for _ in range(29))]
    cancelled = waiter.call("cancel", id=3, delays=delays, wait=10)
    assert cancelled["cancelled"] >= 1
    assert holder.reply(held)["all"] == ["3:a:1", "4:a:1"]
    assert all(value == "3:a:1" for value in cancelled["values"])

    after = waiter.call("get", ids=[3], all=[3, 4], wait=5)
    assert after["values"] == ["3:a:1"] and after["all"] == ["3:a:1", "4:a:1"]
    settled = waiter.stats(settle=5)
    assert settled["in_flight"] == 0
    assert settled["stats"]["load_count"] == 0 and settled["stats"]["lease_count"] == 0
    assert holder.stats(settle=5)["in_flight"] == 0
    assert fleet.loads([3, 4]) == [1, 1]
    fleet.finish()


# ---------------------------------------------------------------- the lease server lost


@pytest.mark.parametrize("how", ["killed", "blackholed"])
def test_a_lost_lease_server_makes_every_process_load_by_itself(
    fleet: Fleet,
    how: str,
    redis_server_factory: Callable[..., RedisServer],
    tcp_proxy: Callable[[str, int], TcpProxy],
) -> None:
    if how == "killed":
        server = redis_server_factory()
        fleet.shared_url, lose = f"{server.url}/0", server.kill
    else:
        proxy = tcp_proxy(SHARED_HOST, SHARED_PORT)
        fleet.shared_url, lose = proxy.url("redis", "/0"), proxy.blackhole
    fleet.shared_options = {"health": HEALTH}
    lease = 2.0
    holder = fleet.member("a", lease=lease, load=1.0)
    others = [fleet.member("b", lease=lease, load=0.05), fleet.member("c", lease=lease, load=0.05)]
    everyone = [holder, *others]
    for member in everyone:
        member.ready()
    held = holder.send("get", ids=[5])
    loading = holder.loading(5)
    tags = [member.send("get", ids=[5]) for member in others]
    eventually(lambda: all(waiting(member) for member in others), 5, "b and c wait for a's lease")
    lost_at = time.time()
    lose()

    answered = holder.reply(held, 10)
    assert answered["values"] == ["5:a:1"]
    assert answered["done"] <= loading["at"] + 1.0 + SLACK
    for member, tag in zip(others, tags, strict=True):
        reply = member.reply(tag, lease + 10)
        item_id, loaded_by, _ = parts(reply["values"][0])
        assert (item_id, loaded_by) == (5, member.name)  # fail-open: it loaded by itself
        assert lost_at <= reply["done"] <= loading["at"] + lease + SLACK
    assert fleet.loads([5]) == [3]
    # Every process still answers, each loading by itself, within bounded time.
    tags = [member.send("get", ids=list(range(10, 15)), all=list(range(15, 20))) for member in everyone]
    for member, tag in zip(everyone, tags, strict=True):
        reply = member.reply(tag, 15)
        assert [parts(value)[:2] for value in reply["values"] + reply["all"]] == [
            (item_id, member.name) for item_id in range(10, 20)
        ]
        assert reply["done"] - reply["started"] < 3.0
    assert fleet.loads(list(range(10, 20))) == [3] * 10
    for member in everyone:
        counted = member.stats(settle=5)
        assert counted["in_flight"] == 0
        assert counted["stats"]["lease_fail_open_count"] > 0
    fleet.finish(logged=("cacheme: ",))


# ---------------------------------------------------------------- fencing


@pytest.mark.parametrize("change", ["invalidate", "refresh"])
def test_a_holders_write_is_refused_after_another_process_invalidates_or_refreshes(
    fleet: Fleet, change: str
) -> None:
    holder = fleet.member("a", lease=5.0, load=1.5)
    changer = fleet.member("b", lease=5.0, load=0.05)
    holder.ready()
    changer.ready()
    held = holder.send("get", ids=[2])
    holder.loading(2)
    changed = changer.call(change, id=2)
    answered = holder.reply(held, 10)
    assert answered["values"] == ["2:a:1"]  # a's callers get a's value
    assert changed["done"] < answered["done"]
    counted = holder.stats(settle=5)
    assert counted["in_flight"] == 0
    assert counted["stats"]["lease_count"] == 1 and counted["stats"]["lease_fenced_count"] == 1
    if change == "invalidate":
        assert fleet.raw(2) is None  # a's write was refused: the key stays invalidated
        assert fleet.loads([2]) == [1]
    else:
        assert changed["value"] == "2:b:2"
        assert_holds(fleet, 2, "2:b:2")  # b's refreshed value, not a's
        assert fleet.loads([2]) == [2]
        reader = fleet.member("c", lease=5.0, load=0.05)
        reader.ready()
        assert reader.call("get", ids=[2])["values"] == ["2:b:2"]
        assert reader.stats()["stats"]["load_count"] == 0
    fleet.finish()


@BOTH
def test_a_holder_slower_than_its_lease_is_taken_over_and_its_late_write_refused(fleet: Fleet) -> None:
    lease = 1.0
    slow = fleet.member("a", lease=lease, load=2.5)
    fast = fleet.member("b", lease=lease, load=0.05)
    slow.ready()
    fast.ready()
    held = slow.send("get", ids=[9])
    first = slow.loading(9)
    taken_over = fast.call("get", ids=[9], wait=lease + 10)
    second = fast.loading(9)
    assert second["n"] == 2
    assert second["at"] >= first["at"] + lease - 0.25  # b loaded only once a's lease had expired
    assert taken_over["values"] == ["9:b:2"]
    assert taken_over["done"] <= first["at"] + lease + SLACK
    late = slow.reply(held, 10)
    assert late["values"] == ["9:a:1"]
    assert late["done"] >= taken_over["done"]
    slow_counted = slow.stats(settle=5)
    fast_counted = fast.stats(settle=5)
    assert slow_counted["in_flight"] == fast_counted["in_flight"] == 0
    assert slow_counted["stats"]["lease_count"] == 1 and slow_counted["stats"]["lease_fenced_count"] == 1
    assert fast_counted["stats"]["lease_count"] == 1 and fast_counted["stats"]["lease_wait_count"] == 1
    assert fast_counted["stats"]["lease_fenced_count"] == 0
    assert_holds(fleet, 9, "9:b:2")  # b's value stands
    reader = fleet.member("c", lease=lease, load=0.05)
    reader.ready()
    assert reader.call("get", ids=[9])["values"] == ["9:b:2"]
    assert reader.stats()["stats"]["load_count"] == 0
    assert fleet.loads([9]) == [2]
    fleet.finish()
