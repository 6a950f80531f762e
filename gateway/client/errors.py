"""The client's exceptions, and the JSON-RPC error code that picks each one.

The tree is drawn in the :mod:`gateway.client` docstring. :func:`rpc_error`
turns a response's ``error`` member into the matching :class:`RpcError`.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import ErrorCode

__all__ = [
    "AuthError",
    "BudgetExceeded",
    "Cancelled",
    "ClientError",
    "ConnectionClosed",
    "ConnectionLost",
    "Forbidden",
    "InvalidParams",
    "LimitExceeded",
    "MethodNotFound",
    "ModelUnavailable",
    "ProtocolError",
    "RpcError",
    "StreamGap",
    "StreamLost",
    "StreamNotFound",
    "TokenExpired",
    "Unauthenticated",
    "UpstreamError",
    "rpc_error",
]


class ClientError(Exception):
    """Root of every error the client raises (besides TimeoutError and TypeError)."""


class ProtocolError(ClientError):
    """The server sent something the wire protocol does not allow."""


class RpcError(ClientError):
    """The server answered a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.data = data

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asks you to wait before retrying (``data.retryAfter``)."""
        value = self.data.get("retryAfter") if isinstance(self.data, dict) else None
        return float(value) if isinstance(value, int | float) else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.data))


class MethodNotFound(RpcError):
    """-32601: no such method."""


class InvalidParams(RpcError):
    """-32602: the params do not fit the method (also: unknown model name)."""


class Unauthenticated(RpcError):
    """-32001: the connection has no valid credentials."""


class TokenExpired(RpcError):
    """-32002: the token expired; the server closes the socket with 4501."""


class Forbidden(RpcError):
    """-32003: authenticated, but not allowed."""


class LimitExceeded(RpcError):
    """-32004: a rate, concurrency or size limit; ``data.limit`` names it."""


class Cancelled(RpcError):
    """-32005: a non-streaming call was cancelled."""


class ModelUnavailable(RpcError):
    """-32006: the model exists but cannot serve (e.g. no API key configured)."""


class BudgetExceeded(RpcError):
    """-32007: the token budget is spent; see ``retry_after``."""


class StreamLost(RpcError):
    """-32040/-32041: the stream cannot be resumed (see the two subclasses)."""


class StreamNotFound(StreamLost):
    """-32040: no such stream for you: unknown, expired, or another user's."""


class StreamGap(StreamLost):
    """-32041: the part after the requested position is no longer kept (``data.firstSeq``)."""


class UpstreamError(RpcError):
    """-32010..-32015: the model provider failed; ``code`` says how."""

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (``data.retryable``)."""
        return bool(self.data.get("retryable")) if isinstance(self.data, dict) else False


_RPC_ERRORS: dict[int, type[RpcError]] = {
    ErrorCode.METHOD_NOT_FOUND: MethodNotFound,
    ErrorCode.INVALID_PARAMS: InvalidParams,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.TOKEN_EXPIRED: TokenExpired,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
    ErrorCode.CANCELLED: Cancelled,
    ErrorCode.MODEL_UNAVAILABLE: ModelUnavailable,
    ErrorCode.BUDGET_EXCEEDED: BudgetExceeded,
    ErrorCode.STREAM_NOT_FOUND: StreamNotFound,
    ErrorCode.STREAM_GAP: StreamGap,
}


def rpc_error(error: Any) -> RpcError:
    """The exception for a JSON-RPC ``error`` member (malformed members become -32603)."""
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return RpcError(ErrorCode.INTERNAL_ERROR, f"malformed error object: {error!r}")
    code, message = error["code"], str(error.get("message", ""))
    if ErrorCode.UPSTREAM_PROTOCOL <= code <= ErrorCode.UPSTREAM_ERROR:
        return UpstreamError(code, message, error.get("data"))
    return _RPC_ERRORS.get(code, RpcError)(code, message, error.get("data"))


class ConnectionLost(ClientError):
    """The connection dropped before the answer came; the call may or may not have run."""

    def __init__(self, message: str, *, close_code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


class ConnectionClosed(ConnectionLost):
    """The client has no connection and will not get one back."""


class AuthError(ConnectionClosed):
    """The server refused the credentials; ``close_code`` or ``status`` says how."""

    status: int | None = None
    """The HTTP status of a refused handshake (401, 403), else None."""


def _rebuild(cls: type[ConnectionLost], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc
