"""cacheme: an asyncio cache framework.

Declare nodes (what is cached, its key, how it is loaded, which chain of
storages holds it), register storages by name, and ``await cacheme.get(node)``.
"""

from cacheme.bus import Bus, BusSnapshot
from cacheme.doorkeeper import BloomFilter, DoorKeeper
from cacheme.engine import get, get_all, invalidate, refresh, stats
from cacheme.errors import (
    CachemeError,
    InvalidKeyError,
    NodeDefinitionError,
    StorageConfigError,
    StorageNotRegistered,
)
from cacheme.health import Health, HealthSnapshot
from cacheme.lease import Leases
from cacheme.memoize import Memoize, Memoized
from cacheme.node import Cache, DynamicNode, Node, build_node, get_prefix, nodes, set_prefix
from cacheme.plugins import Storage, hookimpl, installed_schemes
from cacheme.registry import (
    bus_health,
    register_storage,
    registered_storages,
    storage_health,
    unregister_storage,
)
from cacheme.serializer import Serializer
from cacheme.snapshot import NodeSnapshot, Snapshot, StorageSnapshot, snapshot
from cacheme.source import LoadHook, LoadInfo, add_load_hook
from cacheme.stats import LOAD_TIME_BUCKETS, LoadTimeHistogram, Metrics
from cacheme.storage import MISSING, BaseStorage, LocalStorage

__version__ = "1.0.0"

__all__ = [
    "LOAD_TIME_BUCKETS",
    "MISSING",
    "BaseStorage",
    "BloomFilter",
    "Bus",
    "BusSnapshot",
    "Cache",
    "CachemeError",
    "DoorKeeper",
    "DynamicNode",
    "Health",
    "HealthSnapshot",
    "InvalidKeyError",
    "Leases",
    "LoadHook",
    "LoadInfo",
    "LoadTimeHistogram",
    "LocalStorage",
    "Memoize",
    "Memoized",
    "Metrics",
    "Node",
    "NodeSnapshot",
    "NodeDefinitionError",
    "Serializer",
    "Snapshot",
    "Storage",
    "StorageConfigError",
    "StorageNotRegistered",
    "StorageSnapshot",
    "add_load_hook",
    "build_node",
    "bus_health",
    "get",
    "get_all",
    "get_prefix",
    "hookimpl",
    "installed_schemes",
    "invalidate",
    "nodes",
    "refresh",
    "register_storage",
    "registered_storages",
    "set_prefix",
    "snapshot",
    "stats",
    "storage_health",
    "unregister_storage",
]
