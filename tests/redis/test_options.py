"""URL and option checks: every mistake is a StorageConfigError at construction, with no I/O."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import cacheme
from cacheme.errors import StorageConfigError
from cacheme_redis.storage import RedisStorage

# Nothing listens on port 1: a constructor that tried to connect would fail differently.
NOWHERE = "redis://127.0.0.1:1"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("redis://127.0.0.1:notaport", {}, "malformed url"),
        ("redis://127.0.0.1/not-a-db", {}, "database number"),
        ("http://127.0.0.1", {}, "scheme must be one of"),
        ("unix://", {}, "socket path"),
        ("unix:///tmp/redis.sock", {"cluster": True}, "unix:// socket"),
        ("redis://127.0.0.1:1/3", {"cluster": True}, "only has database 0"),
        (NOWHERE, {"cluster": "yes"}, "cluster must be True or False"),
        (NOWHERE, {"batch": 1}, "batch must be True or False"),
        (NOWHERE, {"pool_size": 0}, "pool_size must be an integer >= 1"),
        (NOWHERE, {"pool_size": True}, "pool_size must be an integer >= 1"),
        (NOWHERE, {"pool_size": 2.5}, "pool_size must be an integer >= 1"),
        (NOWHERE, {"pool_timeout": 0}, "pool_timeout must be positive"),
        (NOWHERE, {"pool_timeout": None}, "pool_timeout must be a positive number"),
        (NOWHERE, {"socket_timeout": None}, "socket_timeout must be a positive number"),
        (NOWHERE, {"socket_connect_timeout": -1}, "socket_connect_timeout must be positive"),
        (NOWHERE, {"decode_responses": True}, "keeps bytes"),
        (NOWHERE, {"max_connections": 5}, "use pool_size"),
        (NOWHERE, {"no_such_option": 1}, "no_such_option"),
        (NOWHERE + "?no_such_query_option=1", {}, "no_such_query_option"),
        (NOWHERE, {"cluster": True, "no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_url_or_option_is_a_config_error(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(StorageConfigError, match=message):
        RedisStorage(url, **options)


def test_good_options_are_accepted_without_connecting() -> None:
    storage = cacheme.Storage(
        NOWHERE + "/2", pool_size=7, pool_timeout=0.5, batch=False, client_name="x", socket_timeout=1
    )
    assert isinstance(storage, RedisStorage)
    assert storage.settings.pool_size == 7
    assert storage.settings.batch is False
    assert storage.settings.driver_options["socket_timeout"] == 1
    # Defaults keep every network call short.
    default = cacheme.Storage(NOWHERE)
    assert isinstance(default, RedisStorage)
    assert default.settings.batch is True
    assert default.settings.driver_options["socket_timeout"] <= 5
    assert default.settings.driver_options["socket_connect_timeout"] <= 5
    assert isinstance(cacheme.Storage("rediss://127.0.0.1:1"), RedisStorage)
    assert isinstance(cacheme.Storage("unix:///tmp/none.sock?db=1"), RedisStorage)
    assert isinstance(cacheme.Storage("redis://127.0.0.1:1", cluster=True), RedisStorage)


def test_repr_hides_the_password() -> None:
    storage = cacheme.Storage("redis://user:secret@127.0.0.1:1/0")
    assert "secret" not in repr(storage)
    assert "127.0.0.1:1" in repr(storage)


def test_schemes_are_found_through_the_entry_point() -> None:
    schemes = cacheme.installed_schemes()
    for scheme in ("redis", "rediss", "unix"):
        assert schemes[scheme] == "cacheme_redis.storage:RedisStorage"


def test_plugin_module_does_not_import_the_driver() -> None:
    code = "import sys, cacheme_redis.plugin; print('redis' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


async def test_connect_to_a_dead_server_raises_quickly() -> None:
    storage = RedisStorage(NOWHERE, socket_connect_timeout=1)
    with pytest.raises(Exception, match=r"(?i)connect"):
        await storage.connect()
    await storage.close()


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "key"),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETINFO", b"LIB-NAME", "redis-py(cacheme_v1.0.0)"),
        ("MSET", "ключ", b"\x00\xff" * 5000, "k2", "v" * 20_000),
        ("SET", "k", b"v", "PX", 300),
        ("INCRBYFLOAT", "k", 1.5),
    ],
)
def test_hiredis_packing_sends_exactly_what_redis_py_would(args: tuple[Any, ...]) -> None:
    from redis.asyncio.connection import Connection

    from cacheme_redis.options import hiredis_packing

    packing = hiredis_packing(Connection)
    assert packing is not Connection  # the hiredis extra is installed for the tests
    assert b"".join(packing().pack_command(*args)) == b"".join(Connection().pack_command(*args))
