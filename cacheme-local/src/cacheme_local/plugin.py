"""Entry point of cacheme-local: names its storage classes without importing them."""

from cacheme.plugins import hookimpl


@hookimpl
def cacheme_storage_schemes() -> dict[str, str]:
    return {"local": "cacheme_local.storage:local_storage"}
