"""The storage's URL and options, checked up front, and the redis-py client they describe.

``RedisSettings.parse`` validates everything without I/O and raises
``StorageConfigError`` with a clear message. ``build_client`` makes a new
redis-py asyncio client from the settings (no I/O either); the storage makes
one per event loop, because redis-py connections belong to the loop that
opened them. A new cluster client starts its discovery from every node the
storage's earlier clients found, not only from the URL's node, which may be a
master that died (its replica promoted in its place).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import DataError, RedisError
from redis.retry import Retry

import cacheme
from cacheme.errors import StorageConfigError

__all__ = ["DEFAULT_DRIVER_OPTIONS", "RedisSettings", "build_client"]

SCHEMES = ("redis", "rediss", "unix")

# Short timeouts, so that a dead or stuck server costs a request a few seconds at
# most; one immediate retry, so that a pooled connection broken by a server
# restart is replaced by a fresh one instead of failing the request.
DEFAULT_DRIVER_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 3.0,
}
DEFAULT_RETRIES = 1
DEFAULT_POOL_TIMEOUT = 3.0

# Options this storage decides itself; passing them to the driver would break it.
_REFUSED_OPTIONS = {
    "decode_responses": "the storage keeps bytes; leave decode_responses unset",
    "max_connections": "use pool_size",
    "connection_pool": "the storage builds its own pool from the URL and pool_size",
    "timeout": "use pool_timeout (the wait for a free connection)",
    "single_connection_client": "the storage uses a pool of pool_size connections",
}
# Timeouts that must stay bounded: a request must never wait forever.
_BOUNDED_OPTIONS = ("socket_timeout", "socket_connect_timeout")


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StorageConfigError(f"redis storage: {name} must be a positive number of seconds, got {value!r}")
    if value <= 0:
        raise StorageConfigError(f"redis storage: {name} must be positive, got {value!r}")
    return float(value)


def _check_url(url: object, cluster: bool) -> str:
    if not isinstance(url, str):
        raise StorageConfigError(f"redis storage: url must be a string, got {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise StorageConfigError(f"redis storage: malformed url {url!r}: {error}") from None
    if parts.scheme not in SCHEMES:
        raise StorageConfigError(
            f"redis storage: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}; got {url!r}"
        )
    if parts.scheme == "unix":
        if cluster:
            raise StorageConfigError("redis storage: a cluster cannot be reached through a unix:// socket")
        if not parts.path:
            raise StorageConfigError(f"redis storage: unix:// url needs a socket path, got {url!r}")
        return url
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise StorageConfigError(
            f"redis storage: the url path must be a database number (like /0), got {parts.path!r} in {url!r}"
        )
    if cluster and database not in ("", "0"):
        raise StorageConfigError(f"redis storage: a cluster only has database 0, got {url!r}")
    return url


@dataclass(frozen=True)
class RedisSettings:
    url: str
    cluster: bool
    pool_size: int
    pool_timeout: float
    batch: bool
    driver_options: dict[str, Any]
    # (host, port) of the cluster nodes the storage's clients discovered last: where the
    # next client (another event loop, or after close) starts. Not a setting: shared state.
    cluster_nodes: list[tuple[str, int]] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def parse(
        cls,
        url: object,
        *,
        cluster: object = False,
        pool_size: object = 100,
        pool_timeout: object = DEFAULT_POOL_TIMEOUT,
        batch: object = True,
        **options: Any,
    ) -> RedisSettings:
        if not isinstance(cluster, bool):
            raise StorageConfigError(f"redis storage: cluster must be True or False, got {cluster!r}")
        if not isinstance(batch, bool):
            raise StorageConfigError(f"redis storage: batch must be True or False, got {batch!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise StorageConfigError(f"redis storage: pool_size must be an integer >= 1, got {pool_size!r}")
        checked_url = _check_url(url, cluster)
        for name, reason in _REFUSED_OPTIONS.items():
            if name in options:
                raise StorageConfigError(f"redis storage: option {name!r} is not accepted: {reason}")
        for name in _BOUNDED_OPTIONS:
            if name in options:
                _positive_number(name, options[name])
        settings = cls(
            url=checked_url,
            cluster=cluster,
            pool_size=pool_size,
            pool_timeout=_positive_number("pool_timeout", pool_timeout),
            batch=batch,
            driver_options={**DEFAULT_DRIVER_OPTIONS, **options},
        )
        settings._check_driver_options()
        return settings

    def _check_driver_options(self) -> None:
        """Build a client once (no I/O) so that an option redis-py rejects fails now, not on first use."""
        try:
            client = build_client(self)
            if isinstance(client, Redis):
                pool = client.connection_pool
                pool.connection_class(**pool.connection_kwargs)
        except (TypeError, ValueError, RedisError) as error:
            raise StorageConfigError(f"redis storage: bad option or url {self.url!r}: {error}") from None


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    try:
        from hiredis import pack_command
    except ImportError:  # the hiredis extra is not installed: redis-py packs in Python
        return None
    return cast("Callable[[tuple[Any, ...]], bytes]", pack_command)


_PACK = _hiredis_packer()


class _HiredisPacking:
    """Packs commands with hiredis's C packer, as redis-py's sync client does; its asyncio
    connection packs in Python, argument by argument (a large MGET or MSET costs milliseconds)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        assert _PACK is not None
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [_PACK(args)]
        except TypeError as error:  # what redis-py raises for a value it cannot send
            raise DataError(str(error)) from error


_packing_classes: dict[type[Any], type[Any]] = {}


def hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` packing with hiredis, when hiredis is installed (the ``hiredis`` extra)."""
    if _PACK is None:
        return connection_class
    packing = _packing_classes.get(connection_class)
    if packing is None:
        packing = type(connection_class.__name__, (_HiredisPacking, connection_class), {})
        _packing_classes[connection_class] = packing
    return packing


@functools.cache
def _driver_info() -> DriverInfo:
    """What CLIENT SETINFO reports: ``redis-py(cacheme_v<version>)`` and redis-py's version."""
    return DriverInfo(lib_version=redis.__version__).add_upstream_driver("cacheme", cacheme.__version__)


class _SeededCluster(RedisCluster):
    """redis-py's cluster client that records the nodes each discovery finds into ``known_nodes``
    (a list shared with the storage's other clients, which start their own discovery from it)."""

    known_nodes: list[tuple[str, int]]

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        discovered = [(node.host, int(node.port)) for node in self.get_nodes()]
        if discovered:
            self.known_nodes[:] = discovered
        return self


def build_client(settings: RedisSettings) -> Redis | RedisCluster:
    """A new client for ``settings``: opens no connection until it is used."""
    options = dict(settings.driver_options)
    options.setdefault("retry", Retry(NoBackoff(), DEFAULT_RETRIES))
    if not {"driver_info", "lib_name", "lib_version"} & options.keys():
        # Given once here, because redis-py otherwise reads its own version from the package
        # metadata (an email-format parse, ~1 ms) for every connection it opens.
        options["driver_info"] = _driver_info()
    if settings.cluster:
        # Besides the URL's node, the nodes found by the storage's earlier clients: a new
        # client still finds the cluster when the URL's node is down.
        startup_nodes = [
            *(options.pop("startup_nodes", None) or ()),
            *(ClusterNode(host, port) for host, port in settings.cluster_nodes),
        ]
        # One spare connection per node for the topology refresh the client runs itself;
        # the storage's own semaphore keeps requests to pool_size.
        client = cast(
            "_SeededCluster",
            _SeededCluster.from_url(
                settings.url,
                max_connections=settings.pool_size + 1,
                startup_nodes=startup_nodes or None,
                **options,
            ),
        )
        client.known_nodes = settings.cluster_nodes
        return client
    pool = BlockingConnectionPool.from_url(
        settings.url, max_connections=settings.pool_size, timeout=settings.pool_timeout, **options
    )
    pool.connection_class = hiredis_packing(pool.connection_class)
    return Redis.from_pool(pool)
