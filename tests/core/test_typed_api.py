"""Issue 12, points 1 and 2: the value type flows through the API, and ``get(node, load_fn)``.

The ``assert_type`` lines are checked by ``mypy --strict`` (CI runs it over
tests/): if ``get`` went back to returning ``Any``, mypy fails the build
("Expression is of type Any, not User"). At run time they are no-ops; the
same tests then assert the values themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cacheme
from cacheme import singleflight
from tests.waiting import flights_done

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # pragma: no cover - CI runs 3.11
    from typing_extensions import assert_type


@dataclass
class User:
    id: int
    name: str


def user_node_class(storage: str) -> Any:
    class UserNode(cacheme.Node):
        user_id: int

        def key(self) -> str:
            return f"typed-user:{self.user_id}"

        async def load(self) -> User:
            return User(self.user_id, f"user {self.user_id}")

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    return UserNode


# A node class at module level, so that mypy sees its load's return type.
class ScoreNode(cacheme.Node):
    player: str

    def key(self) -> str:
        return f"score:{self.player}"

    async def load(self) -> int:
        return len(self.player)

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="typed-local", ttl=None)]


# cacheme 0.3.0's form: the value type stated on the node class (and a dataclass option).
class RankNode(cacheme.Node[str], frozen=True):
    rank: int

    def key(self) -> str:
        return f"rank:{self.rank}"

    async def load(self) -> str:
        return f"#{self.rank}"

    class Meta(cacheme.Node.Meta):
        version = "v1"
        caches = [cacheme.Cache(storage="typed-local", ttl=None)]


async def label_of(node: ScoreNode) -> str:
    return f"label of {node.player}"


@pytest.fixture
async def typed_local() -> Any:
    await cacheme.register_storage("typed-local", cacheme.Storage("local://tlfu", size=1000))
    yield "typed-local"
    await cacheme.unregister_storage("typed-local")


async def test_get_get_all_and_refresh_are_typed_by_load(typed_local: str) -> None:
    score = await cacheme.get(ScoreNode(player="ann"))
    assert_type(score, int)
    assert score == 3
    scores = await cacheme.get_all([ScoreNode(player="bo"), ScoreNode(player="cyd")])
    assert_type(scores, list[int])
    assert scores == [2, 3]
    refreshed = await cacheme.refresh(ScoreNode(player="dee"))
    assert_type(refreshed, int)
    assert refreshed == 3


async def test_a_node_may_state_its_value_type(typed_local: str) -> None:
    rank = await cacheme.get(RankNode(rank=2))
    assert_type(rank, str)
    assert rank == "#2"
    assert_type(await cacheme.get_all([RankNode(rank=1)]), list[str])
    with pytest.raises(dataclasses.FrozenInstanceError):
        RankNode(rank=1).rank = 3  # type: ignore[misc]


async def test_get_with_load_fn_is_typed_by_load_fn(typed_local: str) -> None:
    label = await cacheme.get(ScoreNode(player="eve"), label_of)
    assert_type(label, str)
    assert label == "label of eve"
    by_keyword = await cacheme.get(ScoreNode(player="flo"), load_fn=label_of)
    assert_type(by_keyword, str)
    assert by_keyword == "label of flo"


async def test_memoize_keeps_the_function_type(typed_local: str) -> None:
    @cacheme.Memoize(ScoreNode)
    async def score_of(player: str) -> int:
        return len(player) * 10

    @score_of.to_node
    def _(player: str) -> ScoreNode:
        return ScoreNode(player=player)

    memoized: cacheme.Memoized[[str], int] = score_of  # the parameters and the value type kept
    assert memoized is score_of
    assert_type(await score_of("gus"), int)
    assert await score_of("gus") == 30


async def test_a_dynamic_node_gives_any(typed_local: str) -> None:
    built = cacheme.build_node("TypedDynamic", "v1", [cacheme.Cache(storage=typed_local, ttl=None)])

    async def load(node: cacheme.DynamicNode) -> bytes:
        return node.key().encode()

    assert await cacheme.get(built(key="k2"), load) == b"k2"
    cached = await cacheme.get(built(key="k2"))  # a hit: no load needed
    assert_type(cached, Any)
    assert cached == b"k2"


async def test_load_fn_is_called_with_the_node_once_per_key_and_not_on_a_hit(local: str) -> None:
    node_class = user_node_class(local)
    calls: list[int] = []

    async def load_fn(node: Any) -> User:
        calls.append(node.user_id)
        await asyncio.sleep(0.02)
        return User(node.user_id, "from load_fn")

    values = await asyncio.gather(*(cacheme.get(node_class(user_id=i % 5), load_fn) for i in range(500)))
    assert values == [User(i % 5, "from load_fn") for i in range(500)]
    assert sorted(calls) == [0, 1, 2, 3, 4]
    # A hit never calls it; the node's own load() is used when none is given.
    assert await cacheme.get(node_class(user_id=1), load_fn=load_fn) == User(1, "from load_fn")
    assert await cacheme.get(node_class(user_id=9)) == User(9, "user 9")
    assert len(calls) == 5
    metrics = cacheme.stats(node_class)
    assert (metrics.load_success_count(), metrics.request_count()) == (6, 502)
    assert singleflight.in_flight_count() == 0


async def test_a_failing_load_fn_fails_its_callers_and_is_counted(local: str) -> None:
    node_class = user_node_class(local)

    async def broken(node: Any) -> User:
        raise LookupError(f"no user {node.user_id}")

    with pytest.raises(LookupError, match="no user 4"):
        await cacheme.get(node_class(user_id=4), broken)
    assert cacheme.stats(node_class).load_failure_count() == 1
    assert await cacheme.get(node_class(user_id=4)) == User(4, "user 4")  # nothing was cached


async def test_values_read_back_from_a_remote_tier_have_the_load_type(tmp_path: Path) -> None:
    await cacheme.register_storage("typed-sqlite", cacheme.Storage(f"sqlite:///{tmp_path}/typed.db"))
    try:
        node_class = user_node_class("typed-sqlite")
        assert await cacheme.get(node_class(user_id=7)) == User(7, "user 7")
        assert await flights_done()
        again = await cacheme.get(node_class(user_id=7))
        assert cacheme.stats(node_class).hit_count() == 1
        assert isinstance(again, User) and again == User(7, "user 7")
    finally:
        await cacheme.unregister_storage("typed-sqlite")


async def test_a_non_node_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"cacheme\.get takes cacheme\.Node instances"):
        await cacheme.get(User(1, "x"))  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"cacheme\.get_all takes cacheme\.Node instances"):
        await cacheme.get_all([User(1, "x")])  # type: ignore[arg-type]
