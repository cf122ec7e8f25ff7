"""SQL storages for cacheme: ``sqlite://``, ``postgresql://`` / ``postgres://`` and ``mysql://``.

The storage classes live in one module per database (``cacheme_sql.sqlite``,
``cacheme_sql.postgresql``, ``cacheme_sql.mysql``) so that importing this
package imports no driver. Build them with ``cacheme.Storage(url, **options)``.
"""

from cacheme_sql.ddl import ddl_statements, ddl_text

__all__ = ["ddl_statements", "ddl_text"]
