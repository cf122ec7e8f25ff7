"""Options, URLs and table names are checked when the storage is built: before any connection or SQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme.errors import StorageConfigError
from cacheme_sql.base import MAX_TABLE_NAME_LENGTH, SqlStorage
from cacheme_sql.ddl import DIALECTS, ddl_statements, ddl_text

# Nothing listens on port 1: a storage that tried to connect here would fail differently.
URLS = ["sqlite:///never-created.db", "postgresql://u@127.0.0.1:1/db", "mysql://u@127.0.0.1:1/db"]

BAD_TABLE_NAMES: list[Any] = [
    "",
    "1table",
    "9",
    "cache-data",
    "cache data",
    "cache;DROP TABLE users",
    "schema.table",
    "`quoted`",
    '"quoted"',
    "tablé",
    "t\n",
    "a" * (MAX_TABLE_NAME_LENGTH + 1),
    None,
    42,
    b"bytes",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("table", BAD_TABLE_NAMES, ids=repr)
def test_bad_table_names_are_refused_when_built(url: str, table: Any) -> None:
    with pytest.raises(StorageConfigError, match="table"):
        cacheme.Storage(url, table=table)


@pytest.mark.parametrize("url", URLS)
def test_good_table_names_are_kept(url: str) -> None:
    for table in ["cacheme_data", "_t", "Cache2", "a" * MAX_TABLE_NAME_LENGTH]:
        storage = cacheme.Storage(url, table=table)
        assert isinstance(storage, SqlStorage)
        assert storage.table == table
        assert table in repr(storage)


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": True}, "pool_size"),
        ({"sweep_interval": -1}, "sweep_interval"),
        ({"sweep_interval": timedelta(0)}, "sweep_interval"),
        ({"sweep_interval": "60"}, "sweep_interval"),
        ({"sweep_batch_size": 0}, "sweep_batch_size"),
        ({"create_table": "yes"}, "create_table"),
        ({"connect_timeout": None}, "connect_timeout"),
        ({"command_timeout": float("inf")}, "command_timeout"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_bad_options_are_refused(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(StorageConfigError, match=message):
        cacheme.Storage(url, **options)


@pytest.mark.parametrize("url", URLS)
def test_options_are_read(url: str) -> None:
    storage = cacheme.Storage(url, sweep_interval=timedelta(minutes=2), pool_size=3, command_timeout=2)
    assert isinstance(storage, SqlStorage)
    assert (storage.sweep_interval, storage.pool_size, storage.command_timeout) == (120.0, 3, 2.0)
    assert storage.table == "cacheme_data"
    disabled = cacheme.Storage(url, sweep_interval=None, create_table=False)
    assert isinstance(disabled, SqlStorage)
    assert disabled.sweep_interval is None
    assert disabled.create_table is False


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://relative.db",
        "sqlite://host/file.db",
        "sqlite:///",
        "sqlite:///file.db?mode=ro",
        "mysql://root@127.0.0.1:3306",
        "mysql://root@127.0.0.1:3306/db?charset=latin1",
        "mysql://root@127.0.0.1:99999/db",
        "postgresql://u@127.0.0.1:notaport/db",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(StorageConfigError):
        cacheme.Storage(url)


def test_sqlite_paths() -> None:
    relative = cacheme.Storage("sqlite:///relative/cache.db")
    absolute = cacheme.Storage("sqlite:////abs/path/cache.db")
    assert getattr(relative, "path") == "relative/cache.db"  # noqa: B009
    assert getattr(absolute, "path") == "/abs/path/cache.db"  # noqa: B009


def test_driver_options_pass_through_only_when_the_driver_takes_them() -> None:
    cacheme.Storage(URLS[1], server_settings={"application_name": "x"})
    cacheme.Storage(URLS[2], program_name="x")
    with pytest.raises(StorageConfigError, match="server_settings"):
        cacheme.Storage(URLS[2], server_settings={})
    with pytest.raises(StorageConfigError, match="program_name"):
        cacheme.Storage(URLS[0], program_name="x")


def test_password_is_not_shown() -> None:
    storage = cacheme.Storage("mysql://user:s3cret@127.0.0.1:3306/db")
    assert "s3cret" not in repr(storage)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ddl_statements_are_the_packaged_file_for_any_table(dialect: str) -> None:
    statements = ddl_statements(dialect, "my_cache")
    assert statements[0].startswith("CREATE TABLE IF NOT EXISTS my_cache (")
    assert all("cacheme_data" not in statement for statement in statements)
    assert "my_cache_expire_idx" in " ".join(statements)
    # The default table gives back the file's statements: same words, comments dropped.
    code = [statement.split() for statement in ddl_statements(dialect)]
    text = "\n".join(line for line in ddl_text(dialect).splitlines() if not line.startswith("--"))
    assert code == [part.split() for part in text.split(";") if part.strip()]
    assert len(code) == (1 if dialect == "mysql" else 2)
