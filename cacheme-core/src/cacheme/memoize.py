"""Memoize: cache an async function through a node.

    @cacheme.Memoize(UserInfoNode)
    async def get_user_info(user_id: int) -> dict: ...

    @get_user_info.to_node
    def _(user_id: int) -> UserInfoNode:
        return UserInfoNode(user_id=user_id)

The function is the source: on a miss it is called with the caller's
arguments (once per key however many callers wait), and the node says
where and under which key the result is cached.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar

from cacheme import engine
from cacheme.errors import NodeDefinitionError
from cacheme.node import DynamicNode, Node

__all__ = ["Memoize", "Memoized"]

P = ParamSpec("P")
R = TypeVar("R")


class Memoized(Generic[P, R]):
    """The memoized function; call it like the original.

    On a class it is a method: ``instance.method(...)`` passes ``self`` on, to
    the function and to the ``to_node`` mapper alike (write the mapper with
    ``self`` too).
    """

    __name__: str
    __qualname__: str

    def __init__(self, node_class: type[Node], function: Callable[P, Awaitable[R]]) -> None:
        self.node_class = node_class
        self.function = function
        self._to_node: Callable[P, Node] | None = None
        functools.update_wrapper(self, function)

    def to_node(self, mapper: Callable[P, Node]) -> Callable[P, Node]:
        """Register the function that maps the call's arguments to a node.

        It returns an instance of the Memoize's node class or of a subclass of
        it (a DynamicNode for a class made by ``build_node``).
        """
        self._to_node = mapper
        return mapper

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """The coroutine of the call (no coroutine of its own around the engine's)."""
        mapper = self._to_node
        if mapper is None:
            raise NodeDefinitionError(
                f"{self.function.__qualname__} is memoized but has no "
                f"@{self.function.__name__}.to_node mapper"
            )
        node = mapper(*args, **kwargs)
        if not isinstance(node, self.node_class):
            if isinstance(node, DynamicNode) and issubclass(self.node_class, DynamicNode):
                node = self.node_class(key=node.key())
            else:
                raise TypeError(
                    f"{self.function.__qualname__}.to_node returned {type(node).__qualname__}, "
                    f"expected {self.node_class.__qualname__} or a subclass of it"
                )
        # A partial, not a closure: fewer objects kept per waiting call.
        return engine.get(node, functools.partial(_call_source, self.function, args, kwargs))

    @typing.overload
    def __get__(self, instance: None, owner: type[Any]) -> Memoized[P, R]: ...

    @typing.overload
    def __get__(self, instance: object, owner: type[Any]) -> Callable[..., Coroutine[Any, Any, R]]: ...

    def __get__(
        self, instance: object | None, owner: type[Any]
    ) -> Memoized[P, R] | Callable[..., Coroutine[Any, Any, R]]:
        """On a class: the Memoized itself; on an instance: a bound method (``self`` passed first)."""
        if instance is None:
            return self
        return types.MethodType(self, instance)


def _call_source(
    function: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any], node: Node
) -> Awaitable[R]:
    """The memoized function called with the caller's arguments (the engine passes the node too)."""
    return function(*args, **kwargs)


class Memoize:
    """Decorator factory: ``@Memoize(NodeClass)`` on an async function or method."""

    def __init__(self, node_class: type[Node]) -> None:
        if not (isinstance(node_class, type) and issubclass(node_class, Node)):
            raise NodeDefinitionError(f"Memoize takes a node class, got {node_class!r}")
        self.node_class = node_class

    def __call__(self, function: Callable[P, Awaitable[R]]) -> Memoized[P, R]:
        node_class = self.node_class
        if node_class.load is Node.load and "_cacheme_memoized" not in node_class.__dict__:
            # The function's return annotation types values read back from remote tiers.
            node_class._cacheme_memoized = function  # type: ignore[attr-defined]
            node_class._cacheme_config = None
        return Memoized(node_class, function)
