"""Node classes the Redis tests cache through the core, each in its own key namespace."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import cacheme


def item_node(storage: str, ttl: timedelta | None = timedelta(minutes=5)) -> Any:
    """A new node class whose keys are unique to this call, cached in ``storage`` only.

    Its loader returns ``f"value-{id}"`` and counts calls in ``loaded``.
    """
    namespace = uuid.uuid4().hex

    class Item(cacheme.Node):
        id: int

        def key(self) -> str:
            return f"redis-test:{namespace}:{self.id}"

        async def load(self) -> str:
            Item.loaded += 1  # type: ignore[attr-defined]
            return f"value-{self.id}"

        class Meta(cacheme.Node.Meta):
            version = "v1"
            caches = [cacheme.Cache(storage=storage, ttl=ttl)]

    Item.loaded = 0  # type: ignore[attr-defined]
    return Item
