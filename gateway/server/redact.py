"""Credentials out of log lines: the websockets logger's debug lines, and any text.

:func:`scrub` replaces every registered secret (API keys, signing secrets,
upstream keys: :func:`register_secrets` at start) and anything shaped like a
bearer credential (``Bearer ...``, a JWT, an ``sk-...`` key) with
``[redacted]``; the log formatters run every line through it.

At DEBUG, websockets logs every request header (``Authorization: Bearer
<token>``) and every frame it receives (``auth.login`` carries a token).
Tokens must never reach a log, so header values that carry credentials are
replaced, and inbound data frames are logged by type and size only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from websockets.frames import Frame, Opcode

__all__ = ["RedactingLogger", "register_secrets", "scrub"]

REDACTED = "[redacted]"
_SHAPES = re.compile(
    r"(?i:bearer)\s+\S+"  # an Authorization header value
    r"|eyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"  # a JWT
    r"|\bsk-[\w-]{8,}"  # OpenAI / Anthropic style keys
)
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secrets(values: Iterable[str | None]) -> None:
    """Add values that must never be logged (shorter than 4 characters are ignored)."""
    global _pattern
    _secrets.update(v for v in values if v and len(v) >= 4)
    if _secrets:
        # Longest first, so a secret containing another is replaced whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def scrub(text: str) -> str:
    """``text`` with every registered secret and credential-shaped string redacted."""
    if _pattern is not None:
        text = _pattern.sub(REDACTED, text)
    return _SHAPES.sub(REDACTED, text)


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
