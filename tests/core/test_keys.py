"""Keys every tier can store: a key with a NUL character or a lone surrogate is refused at first use."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest

import cacheme

# (key, what the error must say about it)
UNSTORABLE_KEYS = [
    ("a\x00b", "NUL character"),
    ("\x00", "NUL character"),
    ("ключ\x00", "NUL character"),
    ("a\ud800", "surrogate code point ('\\ud800')"),
    ("\udcff:tail", "surrogate code point"),
    ("é\udfff", "surrogate code point"),
    ("\ud83d\udd11", "surrogate code point"),  # a UTF-16 pair as two code points: not UTF-8 either
]
STORABLE_KEYS = ["plain", "ключ", "🔑", "é" * 300, "\ud7ff\ue000", "tab\tand\nnewline", ""]


class NamedNode(cacheme.Node):
    name: str

    def key(self) -> str:
        return self.name


def node_class(storage: str, ttl: timedelta | None = None) -> tuple[type[NamedNode], list[str]]:
    """A node class cached in ``storage`` (with ``ttl``) whose key is its ``name`` field, and the list of
    names its source loaded."""
    loaded: list[str] = []

    class KeyNode(NamedNode):
        async def load(self) -> str:
            loaded.append(self.name)
            return f"value of {self.name}"

        @classmethod
        async def load_all(cls, nodes: Sequence[cacheme.Node]) -> list[str]:
            return [await node.load() for node in nodes]

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=ttl)]

    return KeyNode, loaded


def assert_refused(error: pytest.ExceptionInfo[cacheme.InvalidKeyError], key: str, reason: str) -> None:
    message = str(error.value)
    assert isinstance(error.value, ValueError) and isinstance(error.value, cacheme.CachemeError)
    assert "KeyNode" in message
    assert repr(f"cacheme:{key}:v1") in message
    assert reason in message


def assert_nothing_happened(node_cls: type[cacheme.Node], loaded: list[str]) -> None:
    stats = cacheme.stats(node_cls)
    assert loaded == []
    assert stats.load_count() == 0
    assert stats.hit_count() == 0
    assert stats.storage_error_count() == 0


@pytest.mark.parametrize(("key", "reason"), UNSTORABLE_KEYS, ids=repr)
async def test_get_refuses_an_unstorable_key_at_first_use(local: str, key: str, reason: str) -> None:
    node_cls, loaded = node_class(local)
    node = node_cls(name=key)
    for _ in range(2):  # refused again on every use: nothing cached the key
        with pytest.raises(cacheme.InvalidKeyError) as error:
            await cacheme.get(node)
        assert_refused(error, key, reason)
    assert_nothing_happened(node_cls, loaded)


@pytest.mark.parametrize(("key", "reason"), UNSTORABLE_KEYS, ids=repr)
async def test_get_all_refuses_a_batch_holding_an_unstorable_key(local: str, key: str, reason: str) -> None:
    node_cls, loaded = node_class(local)
    nodes = [node_cls(name="fine-1"), node_cls(name=key), node_cls(name="fine-2")]
    with pytest.raises(cacheme.InvalidKeyError) as error:
        await cacheme.get_all(nodes)
    assert_refused(error, key, reason)
    assert_nothing_happened(node_cls, loaded)


@pytest.mark.parametrize(("key", "reason"), UNSTORABLE_KEYS, ids=repr)
async def test_memoize_refuses_an_unstorable_key(local: str, key: str, reason: str) -> None:
    called: list[str] = []
    key_node = cacheme.build_node("KeyNode", "v1", [cacheme.Cache(storage=local, ttl=None)])

    @cacheme.Memoize(key_node)
    async def fetch(name: str) -> str:
        called.append(name)
        return name

    @fetch.to_node
    def _(name: str) -> cacheme.DynamicNode:
        return key_node(key=name)

    with pytest.raises(cacheme.InvalidKeyError) as error:
        await fetch(key)
    assert_refused(error, key, reason)
    assert_nothing_happened(key_node, called)


@pytest.mark.parametrize(("key", "reason"), UNSTORABLE_KEYS[:1] + UNSTORABLE_KEYS[3:4], ids=repr)
async def test_refresh_and_invalidate_refuse_an_unstorable_key(local: str, key: str, reason: str) -> None:
    node_cls, loaded = node_class(local)
    with pytest.raises(cacheme.InvalidKeyError):
        await cacheme.refresh(node_cls(name=key))
    with pytest.raises(cacheme.InvalidKeyError):
        await cacheme.invalidate(node_cls(name=key))
    assert_nothing_happened(node_cls, loaded)


@pytest.fixture
def restore_prefix() -> Iterator[None]:
    before = cacheme.get_prefix()
    yield
    cacheme.set_prefix(before)


def test_a_version_or_prefix_that_cannot_be_stored_is_refused_too(restore_prefix: None) -> None:
    class Versioned(cacheme.Node):
        def key(self) -> str:
            return "k"

        class Meta(cacheme.Node.Meta):
            version = "v\x00"

    with pytest.raises(cacheme.InvalidKeyError, match="NUL character"):
        Versioned().full_key()
    cacheme.set_prefix("pre\ud800")
    with pytest.raises(cacheme.InvalidKeyError, match="surrogate code point"):
        node_class("local")[0](name="k").full_key()


@pytest.mark.parametrize("key", STORABLE_KEYS, ids=repr)
async def test_any_key_that_encodes_as_utf8_without_nul_is_cached(local: str, key: str) -> None:
    node_cls, loaded = node_class(local)
    assert node_cls(name=key).full_key() == f"cacheme:{key}:v1"
    assert await cacheme.get(node_cls(name=key)) == f"value of {key}"
    assert await cacheme.get(node_cls(name=key)) == f"value of {key}"
    assert loaded == [key]
    assert cacheme.stats(node_cls).hit_count() == 1
