"""A Redis Cluster that loses a master or moves slots under traffic costs no caller anything.

Each test starts its own 3-master, 3-replica cluster (``redis_cluster_with_replicas``,
``cluster-node-timeout`` 1 s) and runs rounds of thousands of concurrent
``cacheme.get`` plus a ``cacheme.get_all`` through the engine, one round after
the other, while it SIGKILLs a master (its replica is promoted) or moves slots
with ``redis-cli --cluster reshard``. Each round records what it cost (storage
errors, loads, hits), so that the errors can be placed in time. The last test
checks that a new client (another event loop, or after ``close``) still finds
the cluster when the node its URL names is the master that died.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest_asyncio
import redis
from redis.crc import key_slot

import cacheme
from cacheme_redis.storage import RedisStorage
from tests.fixtures.redis_servers import ClusterNodeInfo, RedisClusterWithReplicas, RedisServer
from tests.redis.nodes import item_node
from tests.waiting import flights_done

KEYS = 2000
GETS_PER_ROUND = 2000
GET_ALL_PER_ROUND = 200
# After the promotion, the storage must be back to plain hits within this many seconds.
RECOVERY_SECONDS = 3.0
# Rounds run after the recovery deadline, every one of them answered from Redis.
STEADY_ROUNDS = 5
PROMOTION_TIMEOUT = 30.0

RESHARD_KEYS = 4000
RESHARD_SLOTS = 1000
# Hash tags in the moving slots, and keys under each: redis-cli moves them one by one
# (--cluster-pipeline 1), so that a slot stays half-moved for a while, under small quick rounds.
TAGS = 5
KEYS_PER_TAG = 1000
REDIRECTS = ("MOVED", "ASK", "TRYAGAIN")


@dataclass
class Round:
    """One round of concurrent requests, and what it cost."""

    started: float
    ended: float
    requests: int
    hits: int
    loads: int
    storage_errors: int
    caller_errors: list[BaseException] = field(default_factory=list)
    wrong_values: int = 0


class Traffic:
    """Rounds of ``gets`` concurrent ``cacheme.get`` and one ``cacheme.get_all`` of ``get_all``
    nodes over ids ``0 .. keys-1`` of ``node_class``, one round after the other until ``stop``
    is set. A caller's exception or wrong value is recorded, never raised."""

    def __init__(
        self,
        node_class: Any,
        keys: int,
        seed: int,
        gets: int = GETS_PER_ROUND,
        get_all: int = GET_ALL_PER_ROUND,
    ) -> None:
        self.node_class = node_class
        self.keys = keys
        self.gets = gets
        self.get_all = get_all
        self.metrics = cacheme.stats(node_class)
        self.rounds: list[Round] = []
        self._rng = random.Random(seed)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.rounds.append(await self._round())

    async def _round(self) -> Round:
        metrics = self.metrics
        ids = [self._rng.randrange(self.keys) for _ in range(self.gets)]
        many = self._rng.sample(range(self.keys), self.get_all)
        requests, hits, loads, errors = (
            metrics.request_count(),
            metrics.hit_count(),
            metrics.load_count(),
            metrics.storage_error_count(),
        )
        started = time.monotonic()
        answers = await asyncio.gather(
            *(cacheme.get(self.node_class(id=i)) for i in ids),
            cacheme.get_all([self.node_class(id=i) for i in many]),
            return_exceptions=True,
        )
        ended = time.monotonic()
        caller_errors = [answer for answer in answers if isinstance(answer, BaseException)]
        expected: list[Any] = [f"value-{i}" for i in ids]
        expected.append([f"value-{i}" for i in many])
        wrong = sum(
            1
            for answer, value in zip(answers, expected, strict=True)
            if not isinstance(answer, BaseException) and answer != value
        )
        return Round(
            started=started,
            ended=ended,
            requests=metrics.request_count() - requests,
            hits=metrics.hit_count() - hits,
            loads=metrics.load_count() - loads,
            storage_errors=metrics.storage_error_count() - errors,
            caller_errors=caller_errors,
            wrong_values=wrong,
        )

    async def wait_rounds_started_after(self, moment: float, count: int, timeout: float = 30.0) -> None:
        """Returns once ``count`` rounds that started after ``moment`` are over."""
        deadline = time.monotonic() + timeout
        while sum(1 for done in self.rounds if done.started >= moment) < count:
            assert time.monotonic() < deadline, f"fewer than {count} rounds after {moment} in {timeout}s"
            await asyncio.sleep(0.02)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> float:
    """Polls ``condition`` (blocking Redis calls, run in a thread so that the traffic goes on)
    every 50 ms until it holds; returns when it first held (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(condition):
                return time.monotonic()
        except (redis.RedisError, OSError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def slot_of(node: Any) -> int:
    """The hash slot of a node's full key."""
    return int(key_slot(node.full_key().encode()))


def wait_replicated(cluster: RedisClusterWithReplicas) -> None:
    """Every master's writes so far have reached its replica (WAIT 1)."""
    for node in cluster.masters():
        with cluster.server(node.port).client() as client:
            assert client.execute_command("WAIT", 1, 5000) == 1


class WatchedStorage(RedisStorage):
    """The Redis storage, recording each exception its reads raise. The engine counts as storage
    errors both these and the reads it cuts short at its own deadline: this tells them apart."""

    def __init__(self, url: str) -> None:
        super().__init__(url, cluster=True)
        self.raised: list[Exception] = []

    async def get(self, key: str) -> bytes | None:
        try:
            return await super().get(key)
        except Exception as error:
            self.raised.append(error)
            raise

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        try:
            return await super().get_many(keys)
        except Exception as error:
            self.raised.append(error)
            raise


Register = Callable[[], Awaitable[tuple[str, WatchedStorage]]]


@pytest_asyncio.fixture
async def register(redis_cluster_with_replicas: RedisClusterWithReplicas) -> AsyncIterator[Register]:
    """Registers a new storage on the cluster under a name of this test's own; returns both.
    Each storage has its own clients and batches. All are unregistered (and closed) at the end."""
    names: list[str] = []

    async def new_storage() -> tuple[str, WatchedStorage]:
        name = f"redis-failover-{uuid.uuid4().hex[:8]}"
        storage = WatchedStorage(redis_cluster_with_replicas.url)
        await cacheme.register_storage(name, storage)
        names.append(name)
        return name, storage

    yield new_storage
    for name in names:
        await cacheme.unregister_storage(name)


def total(chosen: list[Round]) -> Round:
    """``chosen`` rounds added up into one."""
    return Round(
        started=min((done.started for done in chosen), default=0.0),
        ended=max((done.ended for done in chosen), default=0.0),
        requests=sum(done.requests for done in chosen),
        hits=sum(done.hits for done in chosen),
        loads=sum(done.loads for done in chosen),
        storage_errors=sum(done.storage_errors for done in chosen),
        caller_errors=[error for done in chosen for error in done.caller_errors],
        wrong_values=sum(done.wrong_values for done in chosen),
    )


def victim_and_replica(cluster: RedisClusterWithReplicas) -> tuple[ClusterNodeInfo, ClusterNodeInfo]:
    """The master the storage's URL names (the harshest one to lose) and its replica."""
    nodes = cluster.nodes()
    victim = next(node for node in nodes if node.port == cluster.servers[0].port)
    assert victim.is_master, "redis-cli --cluster create makes the first nodes given masters"
    replica = next(node for node in nodes if node.master_id == victim.node_id)
    return victim, replica


def promoted(
    cluster: RedisClusterWithReplicas,
    replica: ClusterNodeInfo,
    victim: ClusterNodeInfo,
    seen_by: list[RedisServer],
) -> bool:
    """Each of ``seen_by`` sees ``replica`` as the master of the victim's slots, and reports
    cluster_state:ok."""
    for server in seen_by:
        seen = {node.node_id: node for node in cluster.nodes(seen_by=server)}
        now = seen[replica.node_id]
        if not (now.is_master and now.slots == victim.slots):
            return False
        if cluster.info(server)["cluster_state"] != "ok":
            return False
    return True


async def test_master_killed_under_traffic_replica_promoted(
    register: Register, redis_cluster_with_replicas: RedisClusterWithReplicas
) -> None:
    cluster = redis_cluster_with_replicas
    name, storage = await register()
    node_class = item_node(name)
    metrics = cacheme.stats(node_class)
    assert await cacheme.get_all([node_class(id=i) for i in range(KEYS)]) == [
        f"value-{i}" for i in range(KEYS)
    ]
    await flights_done()
    assert metrics.storage_error_count() == 0
    await asyncio.to_thread(wait_replicated, cluster)
    victim, replica = victim_and_replica(cluster)
    victim_server: RedisServer = cluster.server(victim.port)

    traffic = Traffic(node_class, KEYS, seed=11)
    stop = asyncio.Event()
    runner = asyncio.create_task(traffic.run(stop))
    try:
        await traffic.wait_rounds_started_after(time.monotonic(), 3)
        killed_at = time.monotonic()
        victim_server.kill()
        # The replica takes over (its own view), then every node agrees.
        replica_server = cluster.server(replica.port)
        promoted_at = await wait_until(
            lambda: promoted(cluster, replica, victim, [replica_server]),
            "the replica's promotion",
            PROMOTION_TIMEOUT,
        )
        agreed_at = await wait_until(
            lambda: promoted(cluster, replica, victim, cluster.running()),
            "every node to agree on the promotion",
            PROMOTION_TIMEOUT,
        )
        recovered_by = promoted_at + RECOVERY_SECONDS
        await traffic.wait_rounds_started_after(recovered_by, STEADY_ROUNDS)
    finally:
        stop.set()
        await runner
    await flights_done()

    rounds = traffic.rounds
    # Phases: over before the kill; running at some time between the kill and the recovery
    # deadline (a few seconds after the promotion); started after that deadline.
    before = total([done for done in rounds if done.ended < killed_at])
    window = total([done for done in rounds if done.ended >= killed_at and done.started < recovered_by])
    after = total([done for done in rounds if done.started >= recovered_by])
    everything = total(rounds)
    first_clean = next(
        (done.ended for done in rounds if done.started >= promoted_at and done.hits == done.requests),
        float("nan"),
    )
    last_error_at = max((done.ended for done in rounds if done.storage_errors), default=float("nan"))
    raised = sorted({type(error).__name__ for error in storage.raised})
    print(
        f"\nfailover: promotion {promoted_at - killed_at:.2f}s after the kill, agreed by every node "
        f"{agreed_at - killed_at:.2f}s after it; "
        f"first all-hit round ended {first_clean - promoted_at:.2f}s after the promotion; "
        f"last storage error {last_error_at - promoted_at:+.2f}s from the promotion; "
        f"storage errors before/window/after: {before.storage_errors}/{window.storage_errors}/"
        f"{after.storage_errors} (raised by the storage: {raised}); "
        f"loads in the window {window.loads} of {window.requests} requests; "
        f"{len(rounds)} rounds, {everything.requests} requests"
    )
    assert everything.caller_errors == []
    assert everything.wrong_values == 0
    # Before the kill: every request a hit.
    assert (before.storage_errors, before.loads, before.hits) == (0, 0, before.requests)
    assert before.requests > 0
    # The kill was felt: requests for the dead master's slots were loaded from the source.
    assert window.loads > 0
    # A few seconds after the promotion: every request a hit again, no error.
    assert (after.storage_errors, after.loads, after.hits) == (0, 0, after.requests)
    assert after.requests >= STEADY_ROUNDS * (GETS_PER_ROUND + GET_ALL_PER_ROUND)

    # The dead master's keys are served by the promoted replica.
    with cluster.server(replica.port).client() as client:
        held = int(client.dbsize())
    victim_keys = [i for i in range(KEYS) if victim.serves(slot_of(node_class(id=i)))]
    assert held >= len(victim_keys) > KEYS // 5
    hits, loads = metrics.hit_count(), metrics.load_count()
    values = await asyncio.gather(*(cacheme.get(node_class(id=i)) for i in victim_keys))
    assert values == [f"value-{i}" for i in victim_keys]
    assert (metrics.hit_count() - hits, metrics.load_count() - loads) == (len(victim_keys), 0)


def redirects(server: RedisServer) -> dict[str, int]:
    """The MOVED, ASK and TRYAGAIN replies of a node since the last CONFIG RESETSTAT."""
    with server.client() as client:
        stats = client.info("errorstats")
    counts = {name.removeprefix("errorstat_"): int(fields["count"]) for name, fields in stats.items()}
    return {code: counts[code] for code in REDIRECTS if code in counts}


def reset_stats(cluster: RedisClusterWithReplicas) -> None:
    for server in cluster.running():
        with server.client() as client:
            client.config_resetstat()


async def reshard(source: ClusterNodeInfo, target: ClusterNodeInfo) -> float:
    """Moves ``RESHARD_SLOTS`` slots from ``source`` to ``target`` with redis-cli, without blocking
    the event loop; returns how long it took (seconds)."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        "redis-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
        "--cluster-from", source.node_id, "--cluster-to", target.node_id,
        "--cluster-slots", str(RESHARD_SLOTS), "--cluster-pipeline", "1", "--cluster-yes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    return time.monotonic() - started


def tagged_node(storage: str, tags: list[str]) -> Any:
    """Like ``item_node``, but node ``id`` has the hash tag ``tags[id % len(tags)]``: many keys per
    slot, read with one MGET per slot (which a slot half-way through its move answers TRYAGAIN)."""
    namespace = uuid.uuid4().hex

    class Tagged(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"{{{tags[self.id % len(tags)]}}}:{namespace}:{self.id}"

        async def load(self) -> str:
            return f"value-{self.id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=timedelta(minutes=5))]

    return Tagged


def tags_in(slots: list[int], count: int) -> list[str]:
    """``count`` hash tags, each in its own slot among ``slots``."""
    wanted = set(slots)
    by_slot: dict[int, str] = {}
    for n in itertools.count():
        tag = f"tag-{n}"
        slot = key_slot(tag.encode())
        if slot in wanted:
            by_slot.setdefault(slot, tag)
            if len(by_slot) == count:
                return list(by_slot.values())
    raise AssertionError("unreachable")


async def test_reshard_under_traffic(
    register: Register, redis_cluster_with_replicas: RedisClusterWithReplicas
) -> None:
    cluster = redis_cluster_with_replicas
    source, target = cluster.masters()[:2]
    # redis-cli moves the source's lowest slots; TAGS of them get KEYS_PER_TAG keys each, read
    # by a storage of their own (clients, batches): an MGET of a slot half-way through its move
    # is answered TRYAGAIN and retried by redis-py until the slot has moved, which can outlast
    # the engine's read deadline. The plain keys (one or two per slot) never meet TRYAGAIN.
    moving = sorted(slot for served in source.slots for slot in served)[:RESHARD_SLOTS]
    plain_name, plain_storage = await register()
    tagged_name, tagged_storage = await register()
    plain_class = item_node(plain_name)
    tagged_class = tagged_node(tagged_name, tags_in(moving, TAGS))
    plain = Traffic(plain_class, RESHARD_KEYS, seed=12)
    tagged = Traffic(tagged_class, TAGS * KEYS_PER_TAG, seed=13, gets=50, get_all=50)
    for traffic in (plain, tagged):
        everyone = [traffic.node_class(id=i) for i in range(traffic.keys)]
        assert await cacheme.get_all(everyone) == [f"value-{i}" for i in range(traffic.keys)]
    await flights_done()
    assert plain.metrics.storage_error_count() == tagged.metrics.storage_error_count() == 0

    stop = asyncio.Event()
    runners = [asyncio.create_task(traffic.run(stop)) for traffic in (plain, tagged)]
    try:
        await plain.wait_rounds_started_after(time.monotonic(), 2)
        await asyncio.to_thread(reset_stats, cluster)
        move_started = time.monotonic()
        took = await reshard(source, target)
        move_ended = time.monotonic()
        for traffic in (plain, tagged):
            await traffic.wait_rounds_started_after(move_ended, 2)
    finally:
        stop.set()
        await asyncio.gather(*runners)
    await flights_done()
    followed = await asyncio.to_thread(redirects, cluster.server(source.port))

    now = {node.node_id: node for node in cluster.masters()}
    moved_slots = {slot for slot in range(16384) if source.serves(slot) and now[target.node_id].serves(slot)}
    assert moved_slots == set(moving)
    moved = [plain_class(id=i) for i in range(plain.keys) if slot_of(plain_class(id=i)) in moved_slots]
    stayed = [plain_class(id=i) for i in range(plain.keys) if slot_of(plain_class(id=i)) not in moved_slots]
    tagged_nodes = [tagged_class(id=i) for i in range(tagged.keys)]

    def during(traffic: Traffic) -> Round:
        """The rounds that ran, at least in part, while the slots moved."""
        return total(
            [done for done in traffic.rounds if done.ended >= move_started and done.started < move_ended]
        )

    def outside(traffic: Traffic) -> Round:
        """The rounds over before the move, or begun after it."""
        return total(
            [done for done in traffic.rounds if done.ended < move_started or done.started >= move_ended]
        )

    print(
        f"\nreshard: {RESHARD_SLOTS} slots moved in {took:.2f}s, holding "
        f"{len({slot_of(node) for node in moved}) + TAGS} slots with keys: {len(moved)} plain keys and "
        f"{len(tagged_nodes)} keys under {TAGS} hash tags; replies of the source: {followed}; during the "
        f"move: plain {during(plain).requests} requests, {during(plain).storage_errors} storage errors "
        f"(raised by the storage: {len(plain_storage.raised)}); tagged {during(tagged).requests} requests, "
        f"{during(tagged).storage_errors} storage errors (raised by the storage: "
        f"{sorted({type(error).__name__ for error in tagged_storage.raised})})"
    )
    for traffic in (plain, tagged):
        assert total(traffic.rounds).caller_errors == []
        assert total(traffic.rounds).wrong_values == 0
        assert during(traffic).requests > 0
        # Before and after the move, every request is a hit: no storage error, no load.
        calm = outside(traffic)
        assert (calm.storage_errors, calm.loads, calm.hits) == (0, 0, calm.requests)
    assert followed.get("MOVED", 0) + followed.get("ASK", 0) > 0  # the traffic met the move
    # The plain keys' storage followed every MOVED and ASK: it never failed. (The engine may
    # still have cut a batch slowed by the move short at its read deadline: a miss, counted.)
    assert plain_storage.raised == []

    # Every moved key now lives on the target, and only there.
    with cluster.server(target.port).client() as client, client.pipeline(transaction=False) as pipe:
        for node in [*moved, *tagged_nodes]:
            pipe.get(node.full_key())
        held = pipe.execute()  # a plain client: a key the target did not own would raise MOVED
    assert all(value is not None for value in held)
    with cluster.server(source.port).client() as client:
        assert sum(client.cluster("countkeysinslot", slot) for slot in moved_slots) == 0

    # A get_all over moved and unmoved keys is answered from Redis; once the client has met each
    # moved slot (a slot the traffic did not touch since the move costs one MOVED, which redis-py
    # follows and learns from), the batch goes straight to each slot's new owner: regrouped
    # against the new slot map, no MOVED, ASK or TRYAGAIN on any node.
    async def read_back() -> None:
        for batch in ([*moved[:300], *stayed[:300]], tagged_nodes[::3]):
            metrics = cacheme.stats(type(batch[0]))
            hits, loads = metrics.hit_count(), metrics.load_count()
            assert await cacheme.get_all(batch) == [f"value-{node.id}" for node in batch]
            assert (metrics.hit_count() - hits, metrics.load_count() - loads) == (len(batch), 0)

    await read_back()  # learns
    await asyncio.to_thread(reset_stats, cluster)
    await read_back()  # regrouped
    assert [redirects(server) for server in cluster.running()] == [{}] * len(cluster.running())


async def test_new_clients_find_the_cluster_when_the_url_node_is_dead(
    register: Register, redis_cluster_with_replicas: RedisClusterWithReplicas
) -> None:
    # The storage makes a client per event loop, and a new one after close(). When the
    # node its URL names has died (and its replica took over), a new client must still
    # find the cluster: it starts from the nodes the storage's clients have discovered.
    cluster = redis_cluster_with_replicas
    name, storage = await register()
    node_class = item_node(name)
    metrics = cacheme.stats(node_class)
    nodes = [node_class(id=i) for i in range(300)]
    expected = [f"value-{i}" for i in range(300)]
    assert await cacheme.get_all(nodes) == expected
    await flights_done()
    await asyncio.to_thread(wait_replicated, cluster)
    victim, replica = victim_and_replica(cluster)
    assert victim.port == cluster.servers[0].port  # the node the URL names
    cluster.server(victim.port).kill()
    await wait_until(
        lambda: promoted(cluster, replica, victim, cluster.running()),
        "every node to agree on the promotion",
        PROMOTION_TIMEOUT,
    )

    def on_a_new_loop() -> list[Any]:
        return asyncio.run(cacheme.get_all(nodes))

    def costs() -> tuple[int, int]:
        return metrics.storage_error_count(), metrics.load_count()

    before = costs()
    assert await asyncio.to_thread(on_a_new_loop) == expected
    assert costs() == before  # every key a hit: no storage error, no load
    await storage.close()  # this loop's next request makes a new client too
    assert await cacheme.get_all(nodes) == expected
    assert costs() == before
