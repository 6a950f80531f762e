"""JSON in and out of frames: one parser (orjson) and one nesting limit for every frame.

orjson parses every frame, so every frame gets the same checks, whatever its
ids: valid JSON nested at most :data:`MAX_DEPTH` levels, else
:class:`ParseError`. orjson reads an integer beyond 64 bits as a float, but
JSON-RPC ids must be echoed exactly; so when a request id (or the id an
``rpc.cancel`` names) came out as such a float, the integers of 19 digits or
more are located in the frame's text (a linear scan with ``bytes`` methods,
no recursion), replaced by marker strings, and the frame is parsed by orjson
once more, from which only those ids are taken. Everywhere else (params),
numbers beyond 64 bits are floats, the same for every frame.

orjson cannot encode integers beyond 64 bits either (nor nest deeper than 254
levels); those rare messages are encoded by the stdlib.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import orjson

from gateway.errors import ParseError

__all__ = ["MAX_DEPTH", "decode", "encode", "encode_small"]

MAX_DEPTH = 1024
"""Deepest nesting of arrays and objects a frame may have (orjson's own limit)."""

_LOST = 2.0**63
"""An integral float this large may be an integer orjson could not hold exactly."""

_DIGITS = bytes.maketrans(b"0123456789", b"0" * 10)
_RUN = b"0" * 19
_ZEROS = re.compile(rb"0*")


def _lost_int(value: Any) -> bool:
    return type(value) is float and value.is_integer() and abs(value) >= _LOST


def _cancel_target(item: dict[str, Any]) -> tuple[Any, Any] | None:
    """(container, key) of the id an ``rpc.cancel`` names, if it has one."""
    params = item.get("params")
    if isinstance(params, dict) and "id" in params:
        return params, "id"
    if isinstance(params, list) and len(params) == 1:
        return params, 0
    return None


def _id_slots(message: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every id in ``message`` that must be exact."""
    items = message if isinstance(message, list) else [message]
    slots: list[tuple[Any, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if "id" in item:
            slots.append((item, "id"))
        if item.get("method") == "rpc.cancel":
            target = _cancel_target(item)
            if target is not None:
                slots.append(target)
    return slots


def _big_integers(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each integer literal of 19+ digits outside strings, sign included.

    ``data`` must be valid JSON. Escaped backslashes and quotes are blanked
    (keeping every offset), so the quotes left open and close strings; a digit
    run is outside strings when an even number of quotes precede it.
    """
    plain = data.replace(b"\\\\", b"__").replace(b'\\"', b"__").translate(_DIGITS)
    found = []
    pos = quotes = 0
    while (start := plain.find(_RUN, pos)) >= 0:
        end = _ZEROS.match(plain, start).end()  # type: ignore[union-attr]
        quotes += plain.count(b'"', pos, start)
        pos = end
        if quotes % 2:
            continue  # inside a string
        if start and plain[start - 1] == 0x2D:  # a minus sign
            start -= 1
        before = plain[start - 1 : start]
        if before in (b".", b"e", b"E", b"+", b"-") or plain[end : end + 1] in (b".", b"e", b"E"):
            continue  # the fraction or exponent of a float, or a float's integer part
        found.append((start, end))
    return found


def _exact_ids(data: bytes, message: Any) -> None:
    """Replace the ids of ``message`` that orjson read as floats by their exact integers."""
    spans = _big_integers(data)
    if not spans:
        return  # the floats were written as floats (e.g. 1e20)
    marker = secrets.token_hex(8)
    while marker.encode() in data:
        marker = secrets.token_hex(8)
    pieces, last = [], 0
    for start, end in spans:
        pieces += [data[last:start], b'"', marker.encode(), data[start:end], b'"']
        last = end
    pieces.append(data[last:])
    marked = orjson.loads(b"".join(pieces))
    for (container, key), (marked_container, marked_key) in zip(
        _id_slots(message), _id_slots(marked), strict=True
    ):
        value = marked_container[marked_key]
        if isinstance(value, str) and value.startswith(marker):
            container[key] = int(value[len(marker) :])


def decode(text: str | bytes) -> Any:
    """Parse one frame; raises :class:`ParseError` for invalid or too deeply nested JSON."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        detail = "JSON nests too deeply" if "depth" in str(exc) else "invalid JSON"
        raise ParseError(f"Parse error: {detail}") from None
    if any(_lost_int(container[key]) for container, key in _id_slots(message)):
        _exact_ids(text.encode() if isinstance(text, str) else text, message)
    return message


def encode(obj: Any) -> bytes:
    """Serialise one message to UTF-8 JSON bytes (sent as a text frame).

    Raises ``TypeError``, ``ValueError`` or ``RecursionError`` for a value JSON
    cannot hold (the session answers that call -32603).
    """
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
