"""The exceptions cacheme raises for bad input and configuration."""

from __future__ import annotations

__all__ = [
    "CachemeError",
    "StorageConfigError",
    "NodeDefinitionError",
    "StorageNotRegistered",
    "InvalidKeyError",
]


class CachemeError(Exception):
    """Base class of every error cacheme raises itself."""


class StorageConfigError(CachemeError, ValueError):
    """A storage URL, scheme or option is wrong."""


class NodeDefinitionError(CachemeError, TypeError):
    """A node class or its Meta is defined wrongly."""


class StorageNotRegistered(CachemeError, LookupError):  # noqa: N818 - public name
    """A node's Cache names a storage that was never registered."""


class InvalidKeyError(CachemeError, ValueError):
    """A node's cache key cannot be stored by every tier (a NUL character, or text that is not UTF-8).

    Raised at the node's first use (``get``, ``get_all``, a memoized call...),
    before anything is read or loaded.
    """
