"""An asyncio client for the gateway: calls, streams, batches, notifications, reconnects.

    async with connect("ws://127.0.0.1:8765/ws", token="tok-alice") as client:
        models = await client.call("chat.listModels")
        async for text in client.stream("chat.postChat", message="hi"):
            print(text, end="")

One reader task per connection routes responses by id and ``stream.delta``
notifications to their stream. When the socket drops, the client reconnects
(exponential backoff with jitter) and authenticates again, so calls made
afterwards work; close codes 4500-4999 (and 1000, 1003, 1007-1010) end the
client for good. A call in flight when the socket drops fails with
:class:`ConnectionLost` and is never sent again, except a stream that has its
``streamId`` (from its first delta): after the reconnect it is resumed with
``stream.resume`` after the last ``seq`` it got, and its ``async for`` just
continues, with no text lost or repeated. If the server no longer has it
(restarted, or ``done_ttl`` passed), the stream fails with ConnectionLost.

Every wait has a deadline (``open_timeout``, ``call_timeout``, ``stream_timeout``,
``close_timeout``, or the ``timeout`` argument of :meth:`Client.request`);
passing ``None`` waits forever. Deadlines raise the built-in :class:`TimeoutError`.

    ClientError
    ├── ProtocolError          the server broke the wire protocol (e.g. a gap in stream seq)
    ├── RpcError               a JSON-RPC error response: .code, .message, .data
    │   ├── MethodNotFound         -32601
    │   ├── InvalidParams          -32602
    │   ├── Unauthenticated        -32001
    │   ├── TokenExpired           -32002
    │   ├── Forbidden              -32003
    │   ├── LimitExceeded          -32004  (.retry_after)
    │   ├── Cancelled              -32005
    │   ├── ModelUnavailable       -32006
    │   ├── BudgetExceeded         -32007  (.retry_after)
    │   ├── StreamLost             -32040..-32041: a stream cannot be resumed
    │   │   ├── StreamNotFound         -32040
    │   │   └── StreamGap              -32041
    │   └── UpstreamError          -32010..-32015  (.retryable, .retry_after)
    └── ConnectionLost         the socket dropped with this call in flight; it may have run
        └── ConnectionClosed   no connection now or later: closed by you, the first connect
            │                  failed, a final close code, or reconnect=False
            └── AuthError      refused: HTTP 401/403 at the handshake, a failed auth.login,
                               or close 4500-4999 (bad/expired token, auth timeout, limits)
"""

from __future__ import annotations

from gateway.client.calls import Call
from gateway.client.core import Client, connect
from gateway.client.errors import (
    AuthError,
    BudgetExceeded,
    Cancelled,
    ClientError,
    ConnectionClosed,
    ConnectionLost,
    Forbidden,
    InvalidParams,
    LimitExceeded,
    MethodNotFound,
    ModelUnavailable,
    ProtocolError,
    RpcError,
    StreamGap,
    StreamLost,
    StreamNotFound,
    TokenExpired,
    Unauthenticated,
    UpstreamError,
)
from gateway.client.stream import Stream

__all__ = [
    "AuthError",
    "BudgetExceeded",
    "Call",
    "Cancelled",
    "Client",
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
    "Stream",
    "StreamGap",
    "StreamLost",
    "StreamNotFound",
    "TokenExpired",
    "Unauthenticated",
    "UpstreamError",
    "connect",
]
