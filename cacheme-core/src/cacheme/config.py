"""A node class's Meta, resolved once against the registered storages, for the hot path."""

from __future__ import annotations

import logging
import typing
from typing import Any

import pydantic

from cacheme import lease, registry
from cacheme.bus import BusHub
from cacheme.chain import Tier
from cacheme.doorkeeper import DoorKeeper
from cacheme.errors import NodeDefinitionError
from cacheme.lease import LeaseHub
from cacheme.node import Node, lease_milliseconds
from cacheme.plugins import lease_class_for, lease_schemes
from cacheme.refresh import Policy
from cacheme.serializer import MsgPackSerializer, Serializer
from cacheme.stats import Metrics
from cacheme.storage import LocalStorage

__all__ = ["NodeConfig", "configure", "not_a_node"]

logger = logging.getLogger("cacheme")


class NodeConfig:
    """A node class's Meta, resolved against the registered storages."""

    __slots__ = (
        "adapter",
        "doorkeeper",
        "first_local",
        "generation",
        "hubs",
        "lease",
        "lease_ms",
        "lease_tier",
        "leading_locals",
        "local_prefix",
        "metrics",
        "node_class",
        "own_load_all",
        "policy",
        "reads_before_load",
        "remote",
        "serializer",
        "stale_seconds",
        "tiers",
    )

    def __init__(self, node_class: type[Node]) -> None:
        meta = node_class.Meta
        name = node_class.__qualname__
        if not meta.caches:
            raise NodeDefinitionError(f"{name}.Meta.caches is empty: list at least one cacheme.Cache")
        if node_class.key is Node.key:
            raise NodeDefinitionError(f"{name} must define key(self) -> str")
        self.node_class = node_class
        self.metrics: Metrics = node_class._cacheme_metrics
        self.generation = registry.generation()
        self.tiers = [Tier(c.storage, registry.lookup(c.storage, name), c.ttl) for c in meta.caches]
        first = self.tiers[0].storage
        self.first_local: LocalStorage | None = first if isinstance(first, LocalStorage) else None
        # The local tiers at the head of the chain, read synchronously before any await.
        self.leading_locals: list[tuple[LocalStorage, Any]] = []
        for tier in self.tiers:
            if not isinstance(tier.storage, LocalStorage):
                break
            self.leading_locals.append((tier.storage, tier.ttl))
        self.local_prefix = len(self.leading_locals)
        # Whether any tier is remote (written to with an await).
        self.remote = any(not tier.local for tier in self.tiers)
        # The invalidation buses the local tiers listen on (each once): invalidate and refresh announce.
        self.hubs: list[BusHub] = []
        for tier in self.tiers:
            if tier.hub is not None and tier.hub not in self.hubs:
                self.hubs.append(tier.hub)
        serializer: Serializer | None = meta.serializer
        if serializer is None and any(not tier.local for tier in self.tiers):
            serializer = MsgPackSerializer()
        self.serializer = serializer
        self.doorkeeper: DoorKeeper | None = meta.doorkeeper
        self.adapter = _return_adapter(node_class, serializer)
        # Whether get_all loads with the class's own load_all (one batch, one outcome) rather
        # than each node's load() on its own (see fetch_many).
        self.own_load_all = _defines_load_all(node_class)
        # refresh_after, early_refresh, stale_if_error: None when the node sets none of them.
        self.policy = Policy.from_meta(meta, name)
        # How long past its expiry a tier keeps an entry (stale_if_error), in seconds.
        self.stale_seconds = 0.0
        if self.policy is not None and self.policy.stale_if_error is not None:
            self.stale_seconds = self.policy.stale_if_error
        # Meta.lease: the tier holding the leases, its hub, and the lease's length.
        self.lease: LeaseHub | None = None
        self.lease_tier: Tier | None = None
        self.lease_ms = lease_milliseconds(meta.lease, name) or 0
        if self.lease_ms:
            self.lease_tier, self.lease = _lease_tier(self.tiers, name)
        # Whether a miss of the leading local tiers reads anything (a remote or later local tier,
        # the lease tier) before its load: if not, get's misses skip the per-turn fetch group.
        self.reads_before_load = self.local_prefix < len(self.tiers) or self.lease is not None


def _lease_tier(tiers: list[Tier], name: str) -> tuple[Tier, LeaseHub]:
    """The first remote tier whose backend offers leases, and its lease hub."""
    for tier in tiers:
        if tier.local:
            continue
        leases_class = lease_class_for(tier.storage)
        if leases_class is not None:
            return tier, lease.hub_for(tier.name, tier.storage, leases_class)
    offered = ", ".join(sorted(lease_schemes())) or "none installed"
    raise NodeDefinitionError(
        f"{name}.Meta.lease is set, but no tier of its chain can hold leases: list a storage whose "
        f"backend offers them (schemes with leases: {offered})"
    )


def _defines_load_all(node_class: type[Node]) -> bool:
    """Whether ``node_class`` or a base class other than ``Node`` defines ``load_all``."""
    for klass in node_class.__mro__:
        if "load_all" in klass.__dict__:
            return klass is not Node
    return False


def _return_adapter(
    node_class: type[Node], serializer: Serializer | None
) -> pydantic.TypeAdapter[Any] | None:
    """What turns plain data read back by JSON/MsgPack into the loader's return type."""
    if serializer is None or serializer.restores_types:
        return None
    source: Any = node_class.load
    if source is Node.load:
        # Memoize's function, on this class or (to_node returning a subclass) a base class.
        source = getattr(node_class, "_cacheme_memoized", None)
        if source is None:
            return None
    try:
        hint = typing.get_type_hints(source).get("return")
    except Exception:
        logger.warning("cacheme: cannot resolve the return annotation of %r; values stay plain", source)
        return None
    if hint is None or hint is Any or hint is object:
        return None
    return pydantic.TypeAdapter(hint)


def not_a_node(function: str, given: object) -> TypeError:
    return TypeError(f"cacheme.{function} takes cacheme.Node instances, got {given!r}")


def configure(node_class: type[Node]) -> NodeConfig:
    """The node class's resolved config, rebuilt when storages were (re)registered."""
    if not (isinstance(node_class, type) and issubclass(node_class, Node)):
        raise not_a_node("this function", node_class)
    config: NodeConfig | None = node_class.__dict__.get("_cacheme_config")
    if config is None or config.generation != registry._generation:
        config = NodeConfig(node_class)
        node_class._cacheme_config = config
    return config
