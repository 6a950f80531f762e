"""Methods callable over JSON-RPC: registration, parameter binding and checking.

Binding follows jsonrpcserver: params are bound with ``inspect.signature``
before the call, so a mismatch is ``-32602`` while a ``TypeError`` raised
inside a method stays a bug (``-32603``). Simple annotations (``str``,
``int``, ``float``, ``bool``, ``list``, ``dict``, ``X | None``) are checked too.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidParams

__all__ = ["Final", "Follow", "MethodSpec", "Reasoning", "Registry"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")


@dataclass(frozen=True, slots=True)
class Final:
    """Yielded last by a streaming method: the ``result`` of its JSON-RPC response."""

    result: Any


class Reasoning(str):
    """Yielded by a streaming method: reasoning text, sent as a ``stream.delta`` whose params
    carry ``"reasoning"`` instead of ``"text"`` (and never merged with answer text)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Follow:
    """Returned by a method to answer with an existing stream's log (``stream.resume``).

    The session relays the stream's pieces after position ``after`` as this
    call's deltas, and the stream's final result as this call's result.
    """

    stream_id: str
    after: int


@dataclass(frozen=True, slots=True)
class MethodSpec:
    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    hints: dict[str, Any]
    streaming: bool
    public: bool = False
    """Callable before the connection has authenticated."""
    description: str = ""

    def bind(self, params: Any) -> inspect.BoundArguments:
        """Bind JSON-RPC ``params`` (absent, array or object); raises :class:`InvalidParams`."""
        try:
            if params is None:
                bound = self.signature.bind()
            elif isinstance(params, list):
                bound = self.signature.bind(*params)
            else:
                bound = self.signature.bind(**params)
        except TypeError as exc:
            raise InvalidParams(f"Invalid params for {self.name}: {exc}") from None
        for name, value in bound.arguments.items():
            hint = self.hints.get(name)
            if hint is None:
                continue
            # ``*args: int`` / ``**kwargs: int`` annotate each item, not the tuple/dict.
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                items = list(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                items = list(value.values())
            else:
                items = [value]
            if not all(_matches(item, hint) for item in items):
                raise InvalidParams(
                    f"Invalid params for {self.name}: {name!r} must be {_describe(hint)}"
                )
        return bound


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    if origin is not None:
        hint = origin
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    return names.get(origin or hint, str(hint))


class Registry:
    """Name -> :class:`MethodSpec`. Refuses bad registrations when they are made."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodSpec] = {}

    def add(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        public: bool = False,
        description: str | None = None,
    ) -> MethodSpec:
        if not _NAME.match(name) or any(part.startswith("_") for part in name.split(".")):
            raise ValueError(f"invalid JSON-RPC method name {name!r}")
        if name in self._methods:
            raise ValueError(f"method {name!r} is registered twice")
        if not callable(fn):
            raise TypeError(f"{name!r} is not callable")
        streaming = inspect.isasyncgenfunction(fn)
        if not streaming and not inspect.iscoroutinefunction(fn):
            raise TypeError(f"{name!r} must be an async function or async generator")
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        hints.pop("return", None)
        spec = MethodSpec(
            name=name,
            fn=fn,
            signature=signature,
            hints=hints,
            streaming=streaming,
            public=public,
            description=inspect.cleandoc(description or fn.__doc__ or ""),
        )
        self._methods[name] = spec
        return spec

    def get(self, name: str) -> MethodSpec | None:
        return self._methods.get(name)

    def __iter__(self) -> Iterator[MethodSpec]:
        return iter(self._methods.values())

    def __contains__(self, name: object) -> bool:
        return name in self._methods
