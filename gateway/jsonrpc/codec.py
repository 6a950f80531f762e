"""JSON in and out of frames: orjson on the hot path, exactness where orjson falls short.

orjson turns integers beyond 64 bits into floats and refuses to encode them,
but JSON-RPC ids must be echoed exactly. A frame whose request ids (or the id
an ``rpc.cancel`` names) came out as floats is therefore decoded again with
the stdlib (which keeps big integers), and anything orjson cannot encode is
encoded by the stdlib.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from gateway.errors import ParseError

__all__ = ["decode", "encode", "encode_small"]


def _item_has_float_id(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    if isinstance(item.get("id"), float):
        return True
    # rpc.cancel names a request id in its params: it must match that id exactly.
    if item.get("method") == "rpc.cancel":
        params = item.get("params")
        if isinstance(params, dict):
            return isinstance(params.get("id"), float)
        if isinstance(params, list):
            return any(isinstance(p, float) for p in params)
    return False


def _has_float_id(obj: Any) -> bool:
    if isinstance(obj, list):
        return any(_item_has_float_id(item) for item in obj)
    return _item_has_float_id(obj)


def decode(text: str | bytes) -> Any:
    """Parse one frame; raises :class:`ParseError` for invalid or too deeply nested JSON."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        detail = "JSON nests too deeply" if "depth" in str(exc) else "invalid JSON"
        raise ParseError(f"Parse error: {detail}") from None
    if _has_float_id(obj):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise ParseError("Parse error: invalid JSON") from None
    return obj


def encode(obj: Any) -> bytes:
    """Serialise one message to UTF-8 JSON bytes (sent as a text frame)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def encode_small(obj: Any) -> bytes:
    """:func:`encode` for a small value kept for long (e.g. a stream's id).

    orjson's result holds a buffer of about 4 KiB whatever its length; a copy
    holds only its bytes.
    """
    return bytes(memoryview(encode(obj)))
