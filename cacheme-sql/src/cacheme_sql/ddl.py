"""The packaged schema files (``cacheme_sql/sql/*.sql``), read for any table name.

The storages create their table from these same files, so the schema users run
by hand (``create_table=False``) and the one cacheme creates cannot drift.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["DEFAULT_TABLE", "DIALECTS", "ddl_statements", "ddl_text"]

DEFAULT_TABLE = "cacheme_data"
DIALECTS = ("sqlite", "postgresql", "mysql")


@functools.cache
def ddl_text(dialect: str) -> str:
    """The packaged ``<dialect>.sql`` file as shipped (table ``cacheme_data``)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {', '.join(DIALECTS)}")
    return resources.files("cacheme_sql").joinpath(f"sql/{dialect}.sql").read_text(encoding="utf-8")


def ddl_statements(dialect: str, table: str = DEFAULT_TABLE) -> list[str]:
    """The statements of the packaged file, for ``table`` (an already validated identifier).

    Comment lines are dropped; index names follow the table (``<table>_expire_idx``).
    """
    lines = [line for line in ddl_text(dialect).splitlines() if not line.lstrip().startswith("--")]
    statements = [" ".join(part.split()) for part in "\n".join(lines).split(";")]
    return [statement.replace(DEFAULT_TABLE, table) for statement in statements if statement]
