"""What a close code means to the client: reconnect, or end with which error.

The gateway's own codes (:class:`gateway.server.closecodes.CloseCode`) split at
4500: 4000-4499 may reconnect, 4500-4999 refuse the session. The client reads
them by range rather than by member, so a code it does not know yet still lands
on the right side of the split.
"""

from __future__ import annotations

from websockets.frames import CloseCode as WsCloseCode

from gateway.client.errors import AuthError, ConnectionClosed

__all__ = ["RECONNECT_CLOSE_CODES", "close_error", "refuses_session", "slows_down"]

RECONNECT_CLOSE_CODES = frozenset(
    {
        WsCloseCode.GOING_AWAY,
        WsCloseCode.ABNORMAL_CLOSURE,
        WsCloseCode.INTERNAL_ERROR,
        WsCloseCode.SERVICE_RESTART,
        WsCloseCode.TRY_AGAIN_LATER,
    }
)
"""The standard close codes after which a new connection may work; the others end the client."""


def slows_down(code: int | None) -> bool:
    """Close 4000-4499: this connection was dropped (slow reader, flooding); the next may work."""
    return code is not None and 4000 <= code < 4500


def refuses_session(code: int | None) -> bool:
    """Close 4500-4999: the session was refused (bad or expired token, auth timeout, limits)."""
    return code is not None and 4500 <= code < 5000


def close_error(code: int | None, reason: str, *, reconnect: bool) -> ConnectionClosed | None:
    """The error that ends the client after close ``code``, or None to reconnect.

    A socket that drops without a close code reconnects; ``reconnect=False`` ends
    the client on any close.
    """
    detail = f"close {code}{' ' + reason if reason else ''}"
    if refuses_session(code):
        return AuthError(f"the server ended the session ({detail})", close_code=code, reason=reason)
    if reconnect and (code is None or code in RECONNECT_CLOSE_CODES or slows_down(code)):
        return None
    return ConnectionClosed(f"connection closed ({detail})", close_code=code, reason=reason)
