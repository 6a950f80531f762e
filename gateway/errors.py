"""The gateway's exceptions and the wire codes they fix.

Every error a client can see is a :class:`GatewayError`; its class fixes the
JSON-RPC ``code``. Module code raises them (``raise Forbidden("admin role
required")``); the dispatcher turns them into error responses. Any other
exception is a bug: it is logged and answered ``-32603 Internal error`` with
no detail on the wire.

    GatewayError
    ├── ParseError              -32700
    ├── InvalidRequest          -32600
    ├── MethodNotFound          -32601
    ├── InvalidParams           -32602
    ├── InternalError           -32603
    ├── Unauthenticated         -32001
    ├── TokenExpired            -32002
    ├── Forbidden               -32003
    ├── LimitExceeded           -32004  (data.retryAfter when retrying helps)
    ├── Cancelled               -32005
    ├── ModelUnavailable        -32006
    ├── BudgetExceeded          -32007  (data.retryAfter)
    ├── StoreUnavailable        -32020  (data.retryAfter; shared state in Redis unreachable)
    ├── ConversationNotFound    -32030  (unknown, or another user's)
    ├── ConversationLimit       -32031  (data.limit, data.max)
    ├── MessageNotFound         -32032
    ├── ConversationBusy        -32033  (an answer is streaming in it)
    ├── StreamNotFound          -32040  (unknown, expired, or another user's stream)
    ├── StreamGap               -32041  (data.firstSeq: the oldest position still kept)
    └── UpstreamError           -32010  (data.retryable, data.provider, data.status)
        ├── UpstreamAuthError       -32011
        ├── UpstreamRateLimited     -32012  (data.retryAfter)
        ├── UpstreamUnavailable     -32013
        ├── UpstreamTimeout         -32014
        ├── UpstreamProtocolError   -32015
        └── UpstreamPoolTimeout     -32016  (data.limit "maxConnections", data.max)
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

__all__ = [
    "BudgetExceeded",
    "Cancelled",
    "ConversationBusy",
    "ConversationLimit",
    "ConversationNotFound",
    "ErrorCode",
    "Forbidden",
    "GatewayError",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "LimitExceeded",
    "MessageNotFound",
    "MethodNotFound",
    "ModelUnavailable",
    "ParseError",
    "StoreUnavailable",
    "StreamGap",
    "StreamNotFound",
    "TokenExpired",
    "Unauthenticated",
    "UpstreamAuthError",
    "UpstreamError",
    "UpstreamPoolTimeout",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ErrorCode(IntEnum):
    """JSON-RPC error codes: the standard ones and the gateway's (-32000..-32099)."""

    PARSE_ERROR = -32700
    """The frame is not valid JSON (or nests deeper than the limit)."""
    INVALID_REQUEST = -32600
    """The JSON is not a valid JSON-RPC 2.0 request object."""
    METHOD_NOT_FOUND = -32601
    """No such method, or the method is not exposed."""
    INVALID_PARAMS = -32602
    """The params do not fit the method's signature or its validation."""
    INTERNAL_ERROR = -32603
    """A bug in the gateway; details are in the server log, never on the wire."""
    UNAUTHENTICATED = -32001
    """No valid credentials on this connection (missing, unknown, forged)."""
    TOKEN_EXPIRED = -32002
    """The connection's token expired; the connection is closed after this error."""
    FORBIDDEN = -32003
    """Authenticated, but the user's roles do not allow this."""
    LIMIT_EXCEEDED = -32004
    """A rate, concurrency or size limit; ``data.limit`` names it."""
    CANCELLED = -32005
    """A non-streaming request was cancelled with ``rpc.cancel``."""
    MODEL_UNAVAILABLE = -32006
    """The model exists but cannot serve (e.g. its API key is not configured)."""
    BUDGET_EXCEEDED = -32007
    """The user's token budget is spent; ``data.retryAfter`` says when it refills."""
    CONVERSATION_NOT_FOUND = -32030
    """No such conversation for this user (another user's is "not found" too)."""
    CONVERSATION_LIMIT = -32031
    """A conversation limit: conversations per user, messages per conversation, or size."""
    MESSAGE_NOT_FOUND = -32032
    """No such message in that conversation, or it has the wrong role for the call."""
    CONVERSATION_BUSY = -32033
    """An answer is already streaming in this conversation; wait for it or cancel it."""
    STREAM_NOT_FOUND = -32040
    """No such stream for this user: unknown, expired, or another user's (never told apart)."""
    STREAM_GAP = -32041
    """The pieces after the requested position were trimmed from the stream's log."""
    UPSTREAM_ERROR = -32010
    """The model provider failed in a way not covered below."""
    UPSTREAM_AUTH = -32011
    """The provider refused the gateway's API key (401/403): an operator must fix it."""
    UPSTREAM_RATE_LIMITED = -32012
    """The provider rate-limited the gateway (429)."""
    UPSTREAM_UNAVAILABLE = -32013
    """The provider could not be reached or answered 5xx, or dropped the stream."""
    UPSTREAM_TIMEOUT = -32014
    """The provider did not answer in time."""
    UPSTREAM_PROTOCOL = -32015
    """The provider sent a stream the gateway could not understand."""
    UPSTREAM_POOL_TIMEOUT = -32016
    """All of the model's upstream connections (``max_connections``) stayed busy too long."""
    STORE_UNAVAILABLE = -32020
    """Shared state (Redis) cannot be reached now; ``data.retryAfter`` says when to try again."""


class GatewayError(Exception):
    """Root of every error that reaches a client as a JSON-RPC error object."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    default_message = "Internal error"

    def __init__(self, message: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member for this exception."""
        error: dict[str, Any] = {"code": int(self.code), "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(GatewayError):
    code = ErrorCode.PARSE_ERROR
    default_message = "Parse error"


class InvalidRequest(GatewayError):
    code = ErrorCode.INVALID_REQUEST
    default_message = "Invalid Request"


class MethodNotFound(GatewayError):
    code = ErrorCode.METHOD_NOT_FOUND
    default_message = "Method not found"


class InvalidParams(GatewayError):
    code = ErrorCode.INVALID_PARAMS
    default_message = "Invalid params"


class InternalError(GatewayError):
    code = ErrorCode.INTERNAL_ERROR


class Unauthenticated(GatewayError):
    code = ErrorCode.UNAUTHENTICATED
    default_message = "Authentication required"


class TokenExpired(GatewayError):
    code = ErrorCode.TOKEN_EXPIRED
    default_message = "Token expired"


class Forbidden(GatewayError):
    code = ErrorCode.FORBIDDEN
    default_message = "Forbidden"


class LimitExceeded(GatewayError):
    code = ErrorCode.LIMIT_EXCEEDED
    default_message = "Limit exceeded"


class Cancelled(GatewayError):
    code = ErrorCode.CANCELLED
    default_message = "Request cancelled"


class ModelUnavailable(GatewayError):
    code = ErrorCode.MODEL_UNAVAILABLE
    default_message = "Model unavailable"


class BudgetExceeded(GatewayError):
    code = ErrorCode.BUDGET_EXCEEDED
    default_message = "Token budget exceeded"


class StoreUnavailable(GatewayError):
    code = ErrorCode.STORE_UNAVAILABLE
    default_message = "Shared state is unavailable; retry shortly"


class ConversationNotFound(GatewayError):
    code = ErrorCode.CONVERSATION_NOT_FOUND
    default_message = "Conversation not found"


class ConversationLimit(GatewayError):
    code = ErrorCode.CONVERSATION_LIMIT
    default_message = "Conversation limit reached"


class MessageNotFound(GatewayError):
    code = ErrorCode.MESSAGE_NOT_FOUND
    default_message = "Message not found"


class ConversationBusy(GatewayError):
    code = ErrorCode.CONVERSATION_BUSY
    default_message = "An answer is already streaming in this conversation"


class StreamNotFound(GatewayError):
    code = ErrorCode.STREAM_NOT_FOUND
    default_message = "No such stream (unknown, expired, or not yours)"


class StreamGap(GatewayError):
    code = ErrorCode.STREAM_GAP
    default_message = "That part of the stream is no longer kept; start over"


class UpstreamError(GatewayError):
    """A provider failure. ``data`` always carries ``retryable`` and ``provider``."""

    code = ErrorCode.UPSTREAM_ERROR
    default_message = "The model provider failed"
    retryable = False

    def __init__(
        self,
        message: str | None = None,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "retryable": self.retryable if retryable is None else retryable,
            "provider": provider,
        }
        if status is not None:
            data["status"] = status
        if retry_after is not None:
            data["retryAfter"] = retry_after
        super().__init__(message, data)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after


class UpstreamAuthError(UpstreamError):
    code = ErrorCode.UPSTREAM_AUTH
    default_message = "The model provider rejected the gateway's credentials"


class UpstreamRateLimited(UpstreamError):
    code = ErrorCode.UPSTREAM_RATE_LIMITED
    default_message = "The model provider is rate limiting requests; retry later"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE
    default_message = "The model provider is unavailable; retry later"
    retryable = True


class UpstreamTimeout(UpstreamError):
    code = ErrorCode.UPSTREAM_TIMEOUT
    default_message = "The model provider did not answer in time"
    retryable = True


class UpstreamProtocolError(UpstreamError):
    code = ErrorCode.UPSTREAM_PROTOCOL
    default_message = "The model provider sent a malformed stream"


class UpstreamPoolTimeout(UpstreamError):
    """The model's connection pool stayed full for its ``pool_timeout``: the gateway is
    saturated on that model (nothing was sent upstream). Retryable, so failover applies."""

    code = ErrorCode.UPSTREAM_POOL_TIMEOUT
    default_message = "All connections to the model provider are busy; retry later"
    retryable = True
