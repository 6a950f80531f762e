"""The websockets server's logger, with credentials taken out of its debug lines.

At DEBUG, websockets logs every request header (``Authorization: Bearer
<token>``) and every frame it receives (``auth.login`` carries a token).
Tokens must never reach a log, so header values that carry credentials are
replaced, and inbound data frames are logged by type and size only.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from websockets.frames import Frame, Opcode

__all__ = ["RedactingLogger"]

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_DATA = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})


class _FrameSummary:
    __slots__ = ("_text",)

    def __init__(self, frame: Frame) -> None:
        self._text = f"{frame.opcode.name} [{len(frame.data)} bytes, content not logged]"

    def __str__(self) -> str:
        return self._text


def _redact(msg: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if msg == "< %s: %s" and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
        return (args[0], "[redacted]")
    if msg == "< %s" and len(args) == 1:
        frame = args[0]
        if isinstance(frame, Frame) and frame.opcode in _DATA:
            return (_FrameSummary(frame),)
    return args


class RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """Pass as ``serve(logger=...)``: the same logger, minus credentials."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if args and level <= logging.DEBUG:
            args = _redact(msg, args)
        super().log(level, msg, *args, **kwargs)
