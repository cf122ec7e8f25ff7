"""The exceptions cacheme raises for bad input and configuration."""

from __future__ import annotations

__all__ = ["CachemeError", "StorageConfigError", "NodeDefinitionError", "StorageNotRegistered"]


class CachemeError(Exception):
    """Base class of every error cacheme raises itself."""


class StorageConfigError(CachemeError, ValueError):
    """A storage URL, scheme or option is wrong."""


class NodeDefinitionError(CachemeError, TypeError):
    """A node class or its Meta is defined wrongly."""


class StorageNotRegistered(CachemeError, LookupError):  # noqa: N818 - public name
    """A node's Cache names a storage that was never registered."""
