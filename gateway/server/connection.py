"""One WebSocket connection: authentication state, the frame pump, close codes.

The reader feeds text frames to the :class:`RpcSession`; a writer task drains
the session's outbound queue with a send deadline. When the connection ends,
for whatever reason, every call it started is cancelled and awaited.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from gateway import metrics
from gateway.auth.tokens import Identity
from gateway.context import User, user_var
from gateway.errors import Forbidden, LimitExceeded, TokenExpired, Unauthenticated
from gateway.jsonrpc import MethodSpec, Outbound, OutboundClosed, RpcSession
from gateway.server.closecodes import CloseCode

if TYPE_CHECKING:
    from gateway.server.app import Gateway

__all__ = ["Connection", "current_connection"]

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 32 * 1024
"""Bytes buffered in the transport above which frames wait in the queue (websockets' default)."""

_CLOSE = b""
"""Queued after the last frame a closing connection must still send."""

_connection_var: ContextVar[Connection | None] = ContextVar("gateway_connection", default=None)


def current_connection() -> Connection:
    """The connection serving the current request (for the auth methods)."""
    conn = _connection_var.get()
    if conn is None:
        raise RuntimeError("no connection in this context")
    return conn


class Connection:
    """Per-socket state: who is on it, and how it is pumped and closed."""

    def __init__(self, gateway: Gateway, ws: ServerConnection) -> None:
        self.gateway = gateway
        self.ws = ws
        self.identity: Identity | None = None
        cfg = gateway.config
        self.outbound = Outbound(
            max_bytes=cfg.server.outbound_queue_bytes, write_now=self._write_now
        )
        self.session = RpcSession(
            gateway.registry,
            self.outbound,
            authorize=self._authorize,
            limits=gateway.session_limits,
            on_abuse=self._on_abuse,
            streams=gateway.streams,
            observer=gateway.call_metrics,
        )
        self._close_request: tuple[CloseCode, str] | None = None
        self.send_started: float | None = None
        """Loop time when the frame being written started; None while the writer is idle."""
        self._closing: asyncio.Task[None] | None = None
        self.opened_at = 0.0

    # Authentication

    @property
    def remote_host(self) -> str | None:
        """The client's IP address (for the failed-login limit)."""
        address = self.ws.remote_address
        return str(address[0]) if address else None

    @property
    def user(self) -> User | None:
        return self.identity.user if self.identity else None

    async def login(self, identity: Identity) -> None:
        """Bind ``identity`` to this connection (first login, or refresh of the same user).

        The first login takes a ``connections_per_user`` lease (across every
        process sharing the store); ``StoreUnavailable`` if that cannot be asked.
        """
        if self.identity is not None:
            if identity.user.id != self.identity.user.id:
                raise Forbidden("auth.refresh must keep the same user; open a new connection")
            self.identity = identity
            return
        most = self.gateway.config.limits.connections_per_user
        if not await self.gateway.leases.acquire("conn", identity.user.id, most):
            raise LimitExceeded(
                f"You already have {most} connections open",
                {"limit": "connectionsPerUser", "max": most},
            )
        self.identity = identity
        metrics.USERS.set(len(self.gateway.user_connections))

    def _authorize(self, spec: MethodSpec) -> contextvars.Context:
        identity = self.identity
        if identity is None:
            if not spec.public:
                raise Unauthenticated("Log in first: call auth.login with your token")
        elif identity.expires_at is not None and identity.expires_at <= time.time():
            self.close_soon(CloseCode.TOKEN_EXPIRED, "token expired")
            raise TokenExpired("Your token expired; log in again with a new token")
        context = contextvars.copy_context()
        context.run(user_var.set, identity.user if identity else None)
        context.run(_connection_var.set, self)
        return context

    # Lifecycle

    def close_soon(self, code: CloseCode, reason: str) -> None:
        """Close once the frames already queued (e.g. the error that explains why) are out."""
        if self._close_request is None:
            self._close_request = (code, reason)
            # Scheduled, not awaited: the caller's error response is queued before this runs.
            self._closing = asyncio.get_running_loop().create_task(self.outbound.put(_CLOSE))

    def _on_abuse(self, kind: str) -> None:
        if kind == "flood":
            self.close_soon(CloseCode.TOO_MANY_REQUESTS, "too many requests")
        else:
            self.close_soon(CloseCode.PROTOCOL_ABUSE, "too many invalid frames")

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self.outbound.get()
                if not frame and self._close_request is not None:
                    await self._close(*self._close_request)
                    return
                # The deadline is checked by the gateway's watchdog, not a timer per frame.
                self.send_started = loop.time()
                await self.ws.send(frame, text=True)
                metrics.sent(len(frame))
                self.send_started = None
                # Don't keep the last frame alive while waiting for the next one.
                del frame
        except (OutboundClosed, ConnectionClosed):
            pass

    def _write_now(self, frame: bytes) -> bool:
        """Write ``frame`` at once if the socket takes it without waiting (else it is queued)."""
        ws = self.ws
        if not frame or ws.state is not State.OPEN:
            return False
        if ws.transport.get_write_buffer_size() >= WRITE_HIGH_WATER:
            return False
        broadcast((ws,), frame, text=True)
        metrics.sent(len(frame))
        return True

    def check_send_deadline(self, now: float, send_timeout: float) -> None:
        """Close with 4000 if the frame being written, or the transport's write buffer (pongs
        included), has been stuck past ``send_timeout``."""
        started = self.send_started
        blocked = getattr(self.ws, "write_blocked_since", None)
        if blocked is not None and (started is None or blocked < started):
            started = blocked
        if started is None or now - started <= send_timeout or self._close_request is not None:
            return
        log.info("closing slow consumer %s", self.ws.id)
        metrics.SLOW_CONSUMER_CLOSES.inc()
        self._close_request = (CloseCode.SLOW_CONSUMER, "slow consumer")
        self.outbound.close()
        self._closing = asyncio.get_running_loop().create_task(
            self._close(CloseCode.SLOW_CONSUMER, "slow consumer")
        )

    async def _close(self, code: CloseCode, reason: str) -> None:
        """Close with ``code``; drop the TCP connection if that takes ``close_timeout``.

        websockets' close waits for the close frame to be written: a client that
        stopped reading would hold the connection (and its buffers) forever.
        """
        try:
            async with asyncio.timeout(self.gateway.config.server.close_timeout):
                await self.ws.close(code, reason)
        except TimeoutError:
            log.info("dropping %s: close %d not written in time", self.ws.id, code)
            self.ws.transport.abort()

    async def serve(self) -> None:
        """Run the connection until it closes; cancels everything it started."""
        writer = asyncio.get_running_loop().create_task(self._pump())
        timer = None
        if self.identity is None:
            timer = asyncio.get_running_loop().call_later(
                self.gateway.config.server.auth_timeout, self._auth_deadline
            )
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    await self.ws.close(CloseCode.UNSUPPORTED_DATA, "send JSON-RPC as text frames")
                    break
                await self.session.handle_text(message)
        except ConnectionClosed:
            pass
        finally:
            if timer is not None:
                timer.cancel()
            await self.session.close()
            writer.cancel()
            if self._closing is not None:
                self._closing.cancel()
            await asyncio.gather(writer, *(t for t in [self._closing] if t), return_exceptions=True)
            if self.identity is not None:
                await self.gateway.leases.release("conn", self.identity.user.id)

    def _auth_deadline(self) -> None:
        if self.identity is None:
            self.close_soon(CloseCode.AUTH_TIMEOUT, "authentication timeout")
