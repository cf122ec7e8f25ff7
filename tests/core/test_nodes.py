"""Node classes: dataclasses, own Meta, build_node, nodes(), and clear errors."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

import cacheme


def test_subclasses_become_dataclasses() -> None:
    class Plain(cacheme.Node):
        user_id: int
        tag: str = "x"

        def key(self) -> str:
            return f"plain:{self.user_id}:{self.tag}"

    node = Plain(user_id=1)
    assert dataclasses.is_dataclass(node)
    assert node == Plain(1, "x")
    assert node.full_key() == "cacheme:plain:1:x:"


def test_explicit_dataclass_works_too() -> None:
    @dataclasses.dataclass
    class Decorated(cacheme.Node):
        user_id: int
        tags: list[str] = dataclasses.field(default_factory=list)

        def key(self) -> str:
            return f"decorated:{self.user_id}"

    node = Decorated(user_id=1)
    assert node.tags == [] and node.full_key() == "cacheme:decorated:1:"


def test_frozen_nodes_through_the_class_line() -> None:
    class Frozen(cacheme.Node, frozen=True):
        user_id: int

        def key(self) -> str:
            return f"frozen:{self.user_id}"

        class Meta(cacheme.Node.Meta):
            version = "v3"

    node = Frozen(user_id=2)
    assert node.full_key() == "cacheme:frozen:2:v3"
    assert node.full_key() == "cacheme:frozen:2:v3"
    assert {node: 1}[Frozen(user_id=2)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.user_id = 3  # type: ignore[misc]


def test_key_is_built_once_per_instance() -> None:
    class Counting(cacheme.Node):
        id: int

        def key(self) -> str:
            Counting.calls += 1  # type: ignore[attr-defined]
            return f"counting:{self.id}"

    Counting.calls = 0  # type: ignore[attr-defined]
    node = Counting(id=1)
    assert node.full_key() == node.full_key() == "cacheme:counting:1:"
    assert Counting.calls == 1  # type: ignore[attr-defined]


def test_build_node_classes_are_independent_of_each_other_and_of_node_meta() -> None:
    first = cacheme.build_node("First", "v1", [cacheme.Cache("a", None)])
    second = cacheme.build_node("Second", "v2", [cacheme.Cache("b", timedelta(seconds=1))])
    assert first.Meta.version == "v1" and second.Meta.version == "v2"
    assert first.Meta.caches == [cacheme.Cache("a", None)]
    assert cacheme.Node.Meta.version == "" and list(cacheme.Node.Meta.caches) == []
    assert cacheme.DynamicNode.Meta.caches == []
    assert first(key="k").full_key() == "cacheme:k:v1"
    assert cacheme.stats(first) is not cacheme.stats(second)


def test_a_child_meta_never_changes_its_parent() -> None:
    class Parent(cacheme.Node):
        def key(self) -> str:
            return "p"

        class Meta(cacheme.Node.Meta):
            version = "p1"

    class Child(Parent):
        pass

    Child.Meta.version = "c1"
    assert Parent.Meta.version == "p1"
    assert Child().full_key() == "cacheme:p:c1"


def test_nodes_lists_node_classes_only() -> None:
    class Listed(cacheme.Node):
        def key(self) -> str:
            return "listed"

    built = cacheme.build_node("BuiltListed", "v1", [])
    listed = cacheme.nodes()
    assert Listed in listed and built in listed
    assert all(isinstance(c, type) and issubclass(c, cacheme.Node) for c in listed)
    assert cacheme.DynamicNode not in listed
    metaclass: object = type(cacheme.Node)
    assert metaclass not in listed


def test_bad_meta_is_refused_at_class_definition() -> None:
    with pytest.raises(cacheme.NodeDefinitionError, match="version must be a str"):

        class BadVersion(cacheme.Node):
            class Meta(cacheme.Node.Meta):
                version = 1  # type: ignore[assignment]

    with pytest.raises(cacheme.NodeDefinitionError, match=r"caches must be a list of cacheme\.Cache"):

        class BadCaches(cacheme.Node):
            class Meta(cacheme.Node.Meta):
                caches = ["redis"]  # type: ignore[list-item]

    with pytest.raises(cacheme.NodeDefinitionError, match="serializer"):

        class BadSerializer(cacheme.Node):
            class Meta(cacheme.Node.Meta):
                serializer = object()  # type: ignore[assignment]

    with pytest.raises(cacheme.NodeDefinitionError, match="doorkeeper"):

        class BadDoorkeeper(cacheme.Node):
            class Meta(cacheme.Node.Meta):
                doorkeeper = "bloom"  # type: ignore[assignment]


def test_bad_cache_arguments() -> None:
    with pytest.raises(cacheme.NodeDefinitionError, match="positive"):
        cacheme.Cache("local", timedelta(0))
    with pytest.raises(cacheme.NodeDefinitionError, match="positive"):
        cacheme.Cache("local", timedelta(seconds=-1))
    with pytest.raises(cacheme.NodeDefinitionError, match="timedelta"):
        cacheme.Cache("local", 10)  # type: ignore[arg-type]
    with pytest.raises(cacheme.NodeDefinitionError, match="storage name"):
        cacheme.Cache("", None)


def test_non_str_key_is_an_error() -> None:
    class IntKey(cacheme.Node):
        def key(self) -> str:
            return 1  # type: ignore[return-value]

    with pytest.raises(TypeError, match="must return str, got int"):
        IntKey().full_key()
    with pytest.raises(TypeError):
        cacheme.DynamicNode(key=1)  # type: ignore[arg-type]


def test_bad_prefix() -> None:
    with pytest.raises(ValueError):
        cacheme.set_prefix("")


async def test_unregistered_storage_is_named_in_the_error(local: str) -> None:
    class Lost(cacheme.Node):
        def key(self) -> str:
            return "lost"

        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache("nowhere", None)]

    with pytest.raises(cacheme.StorageNotRegistered, match=r"'nowhere'.*registered: local"):
        await cacheme.get(Lost())


async def test_node_without_caches_or_key_is_an_error(local: str) -> None:
    class NoCaches(cacheme.Node):
        def key(self) -> str:
            return "x"

    with pytest.raises(cacheme.NodeDefinitionError, match="caches is empty"):
        await cacheme.get(NoCaches())

    class NoKey(cacheme.Node):
        class Meta(cacheme.Node.Meta):
            caches = [cacheme.Cache(local, None)]

    with pytest.raises(cacheme.NodeDefinitionError, match="must define key"):
        await cacheme.get(NoKey())


async def test_register_storage_refuses_what_is_not_a_storage() -> None:
    with pytest.raises(cacheme.StorageConfigError, match=r"cacheme\.Storage"):
        await cacheme.register_storage("x", "local://tlfu")  # type: ignore[arg-type]
    with pytest.raises(cacheme.StorageNotRegistered):
        await cacheme.unregister_storage("never-registered")
