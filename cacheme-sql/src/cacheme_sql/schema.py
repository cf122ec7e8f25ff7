"""The columns a cacheme table must have, and the check ``connect`` runs on an existing table.

A table of the configured name that some other program owns (other columns)
would make every read and write fail, counted but never raised. ``connect``
therefore reads the table's columns and refuses a table that lacks one of
``EXPECTED_COLUMNS``; extra columns are allowed (they must then be nullable or
have a default, since cacheme never writes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from cacheme.errors import StorageConfigError

__all__ = ["EXPECTED_COLUMNS", "check_columns"]

EXPECTED_COLUMNS: Final = ("key_hash", "cache_key", "value", "expire", "updated_at")


def check_columns(dialect: str, table: str, found: Sequence[str]) -> None:
    """Raise StorageConfigError unless ``found`` (the columns of ``table``) holds every expected column.

    ``found`` empty means the table does not exist. Names are compared as given:
    a database whose column names are case-insensitive passes them lower-cased.
    """
    if not found:
        raise StorageConfigError(
            f"{dialect} table {table!r} does not exist: pass create_table=True, or create it with the "
            f"packaged schema (cacheme_sql/sql/{dialect}.sql, with 'cacheme_data' replaced by {table!r})"
        )
    missing = [column for column in EXPECTED_COLUMNS if column not in found]
    if missing:
        raise StorageConfigError(
            f"{dialect} table {table!r} is not a cacheme table: it lacks column(s) {', '.join(missing)}. "
            f"cacheme needs the columns {', '.join(EXPECTED_COLUMNS)} (extra columns are allowed); "
            f"the table has {', '.join(found)}. Pass another table=... or drop that table."
        )
