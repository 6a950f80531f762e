"""Modules: classes whose explicitly exposed methods become ``namespace.method``.

Only methods decorated with :func:`exposed` are callable. Everything else
(private names, dunders, helpers of base classes, whatever ``object``
provides) is unreachable, because the registry is built from the decorator
marks alone and never from attribute lookups driven by the frame.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from gateway.jsonrpc.registry import Registry

__all__ = ["Module", "exposed", "register_module"]

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__gateway_exposed__"


def exposed(name: str | None = None, *, public: bool = False) -> Callable[[F], F]:
    """Expose a method over JSON-RPC as ``<namespace>.<name>`` (default: its Python name).

    ``public=True`` allows it before authentication (auth methods only).
    """

    def mark(fn: F) -> F:
        setattr(fn, _MARK, (name or fn.__name__, public))
        return fn

    return mark


class Module:
    """A group of JSON-RPC methods under one ``namespace``."""

    namespace: ClassVar[str] = ""


def register_module(registry: Registry, module: Module) -> list[str]:
    """Register ``module``'s exposed methods; raises ``ValueError`` on a bad registration."""
    namespace = type(module).namespace
    if not namespace or namespace.startswith("_") or not namespace.isidentifier():
        raise ValueError(f"{type(module).__name__} needs a public namespace, not {namespace!r}")
    names = []
    for attr, value in inspect.getmembers_static(type(module)):
        mark = getattr(value, _MARK, None)
        if mark is None:
            continue
        wire_name, public = mark
        if attr.startswith("_") or wire_name.startswith("_"):
            raise ValueError(f"{type(module).__name__}.{attr}: private methods cannot be exposed")
        full = f"{namespace}.{wire_name}"
        registry.add(full, getattr(module, attr), public=public)
        names.append(full)
    return names
