"""WebSocket close codes the gateway uses.

Split the way Centrifugo does: 4000-4499 mean "you may reconnect" (after a
backoff), 4500-4999 mean "do not reconnect without changing something".
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode"]


class CloseCode(IntEnum):
    NORMAL = 1000
    """The client or server ended the connection normally."""
    GOING_AWAY = 1001
    """The server is shutting down; reconnect to another instance or later."""
    PROTOCOL_ERROR = 1002
    """The client broke RFC 6455 (e.g. an unmasked frame); sent by websockets itself."""
    UNSUPPORTED_DATA = 1003
    """A binary frame arrived; the gateway speaks JSON-RPC in text frames only."""
    INVALID_PAYLOAD = 1007
    """A text frame was not valid UTF-8."""
    MESSAGE_TOO_BIG = 1009
    """A frame was larger than ``max_frame_bytes`` (default 1 MiB)."""
    INTERNAL_ERROR = 1011
    """The server failed (or the client stopped answering pings)."""
    SERVICE_RESTART = 1012
    """This process is draining (SIGTERM): reconnect at once; the port's other workers serve."""
    TRY_AGAIN_LATER = 1013
    """The server holds ``max_connections`` already; reconnect after a backoff."""
    # 4000-4499: may reconnect
    SLOW_CONSUMER = 4000
    """The client read too slowly: a frame could not be written within ``send_timeout``."""
    TOO_MANY_REQUESTS = 4001
    """The client kept calling after being told to slow down (-32004 requestsPerSecond)."""
    LOGIN_THROTTLED = 4002
    """Too many failed logins (-32004 failedLogins); reconnect after ``retryAfter`` seconds."""
    STORE_UNAVAILABLE = 4010
    """Logged in by header while shared state (Redis) was unreachable; reconnect after a backoff."""
    # 4500-4999: do not reconnect without a change
    INVALID_TOKEN = 4500
    """The token is unknown, forged or malformed."""
    TOKEN_EXPIRED = 4501
    """The token expired; log in again with a new one."""
    AUTH_TIMEOUT = 4502
    """No successful ``auth.login`` within ``auth_timeout`` seconds of connecting."""
    CONNECTION_LIMIT = 4503
    """The user already holds ``connections_per_user`` connections."""
    PROTOCOL_ABUSE = 4504
    """The client kept sending frames that are not JSON-RPC at all."""

    @property
    def may_reconnect(self) -> bool:
        return self < 4500
