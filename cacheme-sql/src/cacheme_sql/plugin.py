"""Entry point of cacheme-sql: names the storage, bus and leases classes, imports no driver."""

from __future__ import annotations

from cacheme.plugins import hookimpl


@hookimpl
def cacheme_storage_schemes() -> dict[str, str]:
    return {
        "sqlite": "cacheme_sql.sqlite:SQLiteStorage",
        "postgresql": "cacheme_sql.postgresql:PostgreSQLStorage",
        "postgres": "cacheme_sql.postgresql:PostgreSQLStorage",
        "mysql": "cacheme_sql.mysql:MySQLStorage",
    }


@hookimpl
def cacheme_bus_schemes() -> dict[str, str]:
    target = "cacheme_sql.postgresql_bus:PostgreSQLBus"
    return {"postgresql": target, "postgres": target}


@hookimpl
def cacheme_lease_schemes() -> dict[str, str]:
    target = "cacheme_sql.postgresql_lease:PostgreSQLLeases"
    return {"postgresql": target, "postgres": target}
