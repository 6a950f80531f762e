"""The server's metrics and log lines for connection events, one call per site.

Connect, disconnect (with the close code and who closed), refusals and
authentication failures each update :mod:`gateway.metrics` and write one
log line (:mod:`gateway.logs`). Nothing here carries a token or message text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection

from gateway import metrics
from gateway.context import connection_id_var
from gateway.logs import event

if TYPE_CHECKING:
    from gateway.errors import GatewayError
    from gateway.server.app import Gateway
    from gateway.server.connection import Connection

__all__ = [
    "auth_failed",
    "bind",
    "connected",
    "disconnected",
    "drain",
    "logged_in",
    "rejected",
    "run_flush",
]

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
"""Seconds between moves of the hot-path tallies into the shared metrics."""


def bind(ws: ServerConnection) -> None:
    """Name this connection in the log context of its handler task (and the calls it copies)."""
    connection_id_var.set(str(ws.id))


def connected(conn: Connection) -> None:
    metrics.CONNECTIONS.inc()
    metrics.CONNECTIONS_ACCEPTED.inc()
    conn.opened_at = time.monotonic()
    user = conn.user
    event(log, "connect", user_id=user.id if user else None, auth="header" if user else "none")


def _close(ws: ServerConnection) -> tuple[int, str]:
    """The close code and who started the close: server, client, or network (no close frame)."""
    protocol = ws.protocol
    sent, received = protocol.close_sent, protocol.close_rcvd
    if sent is not None and not protocol.close_rcvd_then_sent:
        metrics.CLOSE_CODES.labels(str(sent.code)).inc()
        return sent.code, "server"
    if received is not None:
        return received.code, "client"
    return 1006, "network"


def disconnected(conn: Connection, gateway: Gateway) -> None:
    metrics.CONNECTIONS.dec()
    metrics.USERS.set(len(gateway.user_connections))
    code, by = _close(conn.ws)
    user = conn.user
    event(
        log,
        "disconnect",
        user_id=user.id if user else None,
        code=code,
        by=by,
        seconds=round(time.monotonic() - conn.opened_at, 3),
    )


def rejected(reason: str, ws: ServerConnection | None = None) -> None:
    """A connection refused: at the handshake (no ``ws``) or closed at once (``ws``)."""
    metrics.CONNECTIONS_REJECTED.labels(reason).inc()
    code = _close(ws)[0] if ws is not None else None
    # DEBUG: the metric counts them; a refused handshake logs at most one line (auth_failed).
    event(log, "reject", logging.DEBUG, reason=reason, code=code)


def logged_in(user_id: str) -> None:
    """A connection logged in by frame (``auth.login``); header logins show in ``connect``."""
    event(log, "login", user_id=user_id)


def auth_failed(where: str, exc: GatewayError) -> None:
    """Credentials refused ``where`` (handshake, login, refresh); the token is never logged."""
    event(log, "auth_failed", logging.WARNING, where=where, code=int(exc.code))


def drain(phase: str, level: int = logging.INFO, **fields: Any) -> None:
    """One step of shutting down: stop_accepting, draining, timeout, closing, done."""
    event(log, "drain", level, phase=phase, **fields)


async def run_flush(interval: float = FLUSH_INTERVAL) -> None:
    """Move the hot-path tallies into the metrics every ``interval`` seconds, forever."""
    while True:
        await asyncio.sleep(interval)
        metrics.flush()
