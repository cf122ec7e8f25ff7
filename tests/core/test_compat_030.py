"""Issue 12, points 3, 4, 5 and 8: code written for cacheme 0.3.0 works, or fails clearly.

- ``load_all`` may return 0.3.0's ``(node, value)`` pairs (or a dict, or the
  values in order): ``get_all`` gives the values, never the pairs.
- ``Memoize`` on methods (``self`` passed), and a ``to_node`` returning a
  subclass of the Memoize's node class.
- ``build_node`` again with the same arguments returns the same class.
- A ``Meta`` attribute cacheme does not know is an error at class definition.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import cacheme
from cacheme import singleflight
from cacheme.serializer import CompressedMsgPackSerializer, MsgPackSerializer
from tests.waiting import flights_done


def batch_node_class(storage: str, returns: Any) -> Any:
    """A node class whose ``load_all`` returns ``returns(nodes)``; counts its calls."""

    class BatchNode(cacheme.Node, frozen=True):
        number: int

        def key(self) -> str:
            return f"batch:{self.number}"

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node]) -> Any:
            cls.calls += 1  # type: ignore[attr-defined]
            return returns(list(nodes))

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    BatchNode.calls = 0  # type: ignore[attr-defined]
    return BatchNode


def shuffled_pairs(nodes: list[Any]) -> list[tuple[Any, int]]:
    pairs = [(node, node.number * 10) for node in nodes]
    random.shuffle(pairs)
    return pairs


@pytest.mark.parametrize(
    "returns",
    [
        pytest.param(lambda nodes: [node.number * 10 for node in nodes], id="values-in-order"),
        pytest.param(shuffled_pairs, id="pairs-0.3.0"),
        pytest.param(lambda nodes: {node: node.number * 10 for node in reversed(nodes)}, id="dict"),
        pytest.param(lambda nodes: tuple(node.number * 10 for node in nodes), id="tuple-of-values"),
        pytest.param(
            lambda nodes: [*shuffled_pairs(nodes), (type(nodes[0])(number=999), 0)], id="pairs-with-an-extra"
        ),
    ],
)
async def test_every_load_all_form_gives_the_values(local: str, returns: Any) -> None:
    node_class = batch_node_class(local, returns)
    numbers = [5, 3, 8, 3, 1, 9, 2]
    values = await cacheme.get_all([node_class(number=n) for n in numbers])
    assert values == [n * 10 for n in numbers]
    assert node_class.calls == 1
    # Cached under the right keys: every one a hit now, with its own value.
    again = await cacheme.get_all([node_class(number=n) for n in reversed(numbers)])
    assert again == [n * 10 for n in reversed(numbers)]
    assert node_class.calls == 1
    assert cacheme.stats(node_class).load_success_count() == 6


async def test_values_that_are_tuples_are_values(local: str) -> None:
    node_class = batch_node_class(local, lambda nodes: [(node.number, "x") for node in nodes])
    assert await cacheme.get_all([node_class(number=1), node_class(number=2)]) == [(1, "x"), (2, "x")]


@pytest.mark.parametrize(
    ("returns", "error", "message"),
    [
        pytest.param(
            lambda nodes: shuffled_pairs(nodes)[1:],
            ValueError,
            "returned no value for 1 of 4",
            id="pair-missing",
        ),
        pytest.param(
            lambda nodes: {node: 1 for node in nodes[:2]},
            ValueError,
            "no value for 2 of 4",
            id="dict-missing",
        ),
        pytest.param(
            lambda nodes: [*shuffled_pairs(nodes)[:2], 1, 2],
            TypeError,
            "2 \\(node, value\\) pairs",
            id="mixed",
        ),
        pytest.param(
            lambda nodes: (n.number for n in nodes), TypeError, "returned a generator", id="generator"
        ),
        pytest.param(lambda nodes: "abcd", TypeError, "returned a str", id="str"),
        pytest.param(lambda nodes: {n.number for n in nodes}, TypeError, "returned a set", id="set"),
        pytest.param(lambda nodes: [1, 2, 3], ValueError, "returned 3 values for 4 nodes", id="too-few"),
        pytest.param(lambda nodes: {n.key(): 1 for n in nodes}, TypeError, "is not a node", id="dict-by-key"),
    ],
)
async def test_a_load_all_of_another_form_is_a_clear_error(
    local: str, returns: Any, error: type[Exception], message: str
) -> None:
    node_class = batch_node_class(local, returns)
    nodes = [node_class(number=n) for n in range(4)]
    with pytest.raises(error, match=message):
        await cacheme.get_all(nodes)
    metrics = cacheme.stats(node_class)
    assert (metrics.load_failure_count(), metrics.load_success_count()) == (4, 0)
    assert singleflight.in_flight_count() == 0
    # Nothing was cached: a correct load_all afterwards loads all four.
    node_class.load_all = classmethod(lambda cls, ns: _values(ns))
    assert await cacheme.get_all(nodes) == [0, 10, 20, 30]


async def _values(nodes: Sequence[Any]) -> list[int]:
    return [node.number * 10 for node in nodes]


# ---------------------------------------------------------------- Memoize


@dataclass
class Profile:
    user_id: int
    source: str


def profile_node_class(storage: str) -> Any:
    class ProfileNode(cacheme.Node):
        user_id: int

        def key(self) -> str:
            return f"profile:{self.user_id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=None)]

    return ProfileNode


async def test_memoize_on_a_method_passes_self(local: str) -> None:
    node_class = profile_node_class(local)

    class Service:
        def __init__(self, name: str) -> None:
            self.name = name
            self.calls: list[int] = []

        @cacheme.Memoize(node_class)
        async def profile(self, user_id: int) -> Profile:
            self.calls.append(user_id)
            await asyncio.sleep(0.01)
            return Profile(user_id, self.name)

        @profile.to_node
        def _(self, user_id: int) -> Any:
            assert isinstance(self, Service)
            return node_class(user_id=user_id)

    first, second = Service("first"), Service("second")
    results = await asyncio.gather(*(first.profile(i % 3) for i in range(300)))
    assert results == [Profile(i % 3, "first") for i in range(300)]
    assert sorted(first.calls) == [0, 1, 2]
    # One key per user, whichever instance asks (the node says the key, as in 0.3.0).
    assert await second.profile(1) == Profile(1, "first")
    assert await second.profile(7) == Profile(7, "second")
    assert sorted(first.calls) == [0, 1, 2] and second.calls == [7]
    # On the class it is the Memoized itself, callable with self given.
    assert isinstance(Service.profile, cacheme.Memoized)
    assert await Service.profile(second, 8) == Profile(8, "second")
    assert second.calls == [7, 8]
    assert Service.profile.__name__ == "profile"


async def test_memoize_accepts_a_subclass_node_from_to_node(tmp_path: Path) -> None:
    await cacheme.register_storage("compat-sqlite", cacheme.Storage(f"sqlite:///{tmp_path}/compat.db"))
    try:
        base = profile_node_class("compat-sqlite")

        class AdminProfileNode(base):  # type: ignore[valid-type, misc]
            def key(self) -> str:
                return f"admin-profile:{self.user_id}"

        calls: list[int] = []

        @cacheme.Memoize(base)
        async def profile(user_id: int) -> Profile:
            calls.append(user_id)
            return Profile(user_id, "db")

        @profile.to_node
        def _(user_id: int) -> Any:
            return AdminProfileNode(user_id=user_id) if user_id < 0 else base(user_id=user_id)

        assert await profile(-1) == Profile(-1, "db")
        assert await profile(2) == Profile(2, "db")
        assert await flights_done()
        # Read back from SQLite (no local tier): typed by the memoized function's annotation.
        assert await profile(-1) == Profile(-1, "db")
        assert await profile(2) == Profile(2, "db")
        assert calls == [-1, 2]
        assert cacheme.stats(AdminProfileNode).hit_count() == 1
    finally:
        await cacheme.unregister_storage("compat-sqlite")


async def test_memoize_refuses_a_node_of_another_class(local: str) -> None:
    node_class = profile_node_class(local)
    other = profile_node_class(local)

    @cacheme.Memoize(node_class)
    async def profile(user_id: int) -> Profile:
        return Profile(user_id, "db")

    @profile.to_node
    def _(user_id: int) -> Any:
        return other(user_id=user_id)

    with pytest.raises(
        TypeError, match=r"to_node returned .*ProfileNode, expected .*ProfileNode or a subclass of it"
    ):
        await profile(1)


# ---------------------------------------------------------------- build_node


def test_build_node_again_with_the_same_arguments_is_the_same_class() -> None:
    caches = [cacheme.Cache(storage="compat-a", ttl=None)]
    first = cacheme.build_node(
        "CompatBuilt", "v1", caches, MsgPackSerializer(), cacheme.BloomFilter(100, 0.01)
    )
    doorkeeper = first.Meta.doorkeeper
    assert doorkeeper is not None
    doorkeeper.put("warm")  # state is not a setting
    again = cacheme.build_node(
        "CompatBuilt", "v1", list(caches), MsgPackSerializer(), cacheme.BloomFilter(100, 0.01)
    )
    assert again is first
    assert cacheme.stats(again) is cacheme.stats(first)
    assert [cls for cls in cacheme.nodes() if cls.__name__ == "CompatBuilt"] == [first]


@pytest.mark.parametrize(
    "changed",
    [
        {"version": "v2"},
        {"caches": [cacheme.Cache(storage="compat-b", ttl=None)]},
        {"serializer": CompressedMsgPackSerializer()},
        {"doorkeeper": cacheme.BloomFilter(1000, 0.01)},
    ],
    ids=["version", "caches", "serializer", "doorkeeper"],
)
def test_build_node_again_with_other_arguments_is_an_error(changed: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {
        "version": "v1",
        "caches": [cacheme.Cache(storage="compat-a", ttl=None)],
        "serializer": MsgPackSerializer(),
        "doorkeeper": cacheme.BloomFilter(100, 0.01),
    }
    name = f"CompatOther{next(iter(changed)).title()}"
    cacheme.build_node(name, **arguments)
    with pytest.raises(cacheme.NodeDefinitionError, match=f"build_node\\('{name}'\\) was called before"):
        cacheme.build_node(name, **{**arguments, **changed})


# ---------------------------------------------------------------- Meta


@pytest.mark.parametrize(
    ("attribute", "hint"),
    [
        ("cache", "did you mean 'caches'"),
        ("serialiser", "did you mean 'serializer'"),
        ("refresh_soon", ""),
        ("storage", "cacheme 0.2's single storage, ignored since 0.3.0"),
    ],
)
def test_a_misspelt_meta_attribute_is_an_error(attribute: str, hint: str) -> None:
    meta = type("Meta", (cacheme.Node.Meta,), {"version": "v1", attribute: []})
    with pytest.raises(cacheme.NodeDefinitionError) as raised:
        type("Misspelt", (cacheme.Node,), {"Meta": meta, "key": lambda self: "k"})
    message = str(raised.value)
    assert f"Misspelt.Meta has an attribute cacheme does not know: {attribute!r}" in message
    assert hint in message
    assert "A Meta may set: version, caches, serializer, doorkeeper" in message


def test_a_meta_not_derived_from_node_meta_is_checked_too() -> None:
    with pytest.raises(cacheme.NodeDefinitionError, match="'versoin'"):

        class Plain(cacheme.Node):
            def key(self) -> str:
                return "k"

            class Meta:
                versoin = "v1"


def test_private_names_and_inherited_options_are_accepted() -> None:
    class Base(cacheme.Node):
        def key(self) -> str:
            return "k"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage="compat-a", ttl=None)]
            _note = "a helper of the user's own"

    class Child(Base):
        pass

    assert Child.Meta.version == "v1"
