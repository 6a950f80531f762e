"""``rpc.discover``: an OpenRPC document generated from the registered methods."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

from gateway.jsonrpc.registry import Follow, Registry

__all__ = ["discover"]

_SCHEMAS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    list: {"type": "array"},
    dict: {"type": "object"},
    type(None): {"type": "null"},
}


def _schema(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return {"oneOf": [_schema(arg) for arg in typing.get_args(hint)]}
    return dict(_SCHEMAS.get(origin or hint, {}))


def discover(registry: Registry, *, title: str, version: str) -> dict[str, Any]:
    methods = []
    for spec in registry:
        params = []
        for name, parameter in spec.signature.parameters.items():
            params.append(
                {
                    "name": name,
                    "required": parameter.default is inspect.Parameter.empty,
                    "schema": _schema(spec.hints.get(name, Any)),
                }
            )
        summary, _, rest = spec.description.partition("\n")
        method: dict[str, Any] = {
            "name": spec.name,
            "summary": summary.strip(),
            "params": params,
            "result": {"name": "result", "schema": {}},
            "paramStructure": "either",
        }
        if rest.strip():
            method["description"] = rest.strip()
        # A method answering with a Follow (stream.resume) streams another call's log.
        if spec.streaming or spec.signature.return_annotation in (Follow, "Follow"):
            method["x-streaming"] = True
        methods.append(method)
    return {
        "openrpc": "1.3.2",
        "info": {"title": title, "version": version},
        "methods": methods,
    }
