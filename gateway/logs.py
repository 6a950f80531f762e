"""Log lines as JSON (one object a line) or text, with the context of the call they belong to.

A JSON line::

    {"time": "2026-12-02T01:02:03.456Z", "level": "info", "event": "disconnect",
     "logger": "gateway.server.telemetry", "node": "host-1234",
     "connection_id": "5f0c...", "user_id": "alice", "code": 1000, "by": "client"}

``time`` is RFC 3339 in UTC; ``event`` is a short fixed name (``connect``,
``disconnect``, ``auth_failed``, ``failover``, ``drain``...) given with
:func:`event`, or, for an ordinary log call, its message template (so it
stays a bounded set); ``message`` is the formatted text when it differs.
The call context comes from context variables: ``connection_id`` (set per
connection), ``user_id`` (per call), ``rpc_id``, ``method`` and, for
streaming methods, ``stream_id`` (a stream is named by its request id).
Every line, in either format, goes through
:func:`gateway.server.redact.scrub`: no token or key reaches a log.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

from gateway.context import call_var, connection_id_var, user_var
from gateway.node import node_id
from gateway.server.redact import scrub

__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "event", "setup"]

FORMATS = ("json", "text")

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "event"}
_MAX_ID = 64
"""Characters of a client-chosen request id kept in a log line."""


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` (plain values; never a secret or message text)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"event": name, **fields})


def _context() -> dict[str, Any]:
    out: dict[str, Any] = {}
    conn = connection_id_var.get()
    if conn is not None:
        out["connection_id"] = conn
    user = user_var.get()
    if user is not None:
        out["user_id"] = user.id
    call = call_var.get()
    if call is not None:
        rpc_id = call.id if not isinstance(call.id, str) else call.id[:_MAX_ID]
        out["rpc_id"] = rpc_id
        out["method"] = call.method
        if call.streaming and rpc_id is not None:
            out["stream_id"] = rpc_id
    return out


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The call context, then the record's own extra fields (which win)."""
    fields = _context()
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = scrub(value) if isinstance(value, str) else value
    return fields


def _time(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        message = scrub(record.getMessage())
        name = getattr(record, "event", None) or scrub(str(record.msg))
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "event": name,
            "logger": record.name,
            "node": node_id(),
        }
        if message != name:
            line["message"] = message
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return scrub(text)


def setup(fmt: str | None = None, *, level: str = "INFO", stream: TextIO | None = None) -> str:
    """Log to ``stream`` (stderr) as ``fmt``, JSON unless it is a terminal; returns the format."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "text" if stream.isatty() else "json"
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # One line per handshake or upstream request is noise at INFO; SDK debug lines
    # quote request bodies (message text), so they stay out below WARNING too.
    for noisy in ("websockets", "httpx2", "httpx", "aiohttp", "openai", "anthropic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return fmt
