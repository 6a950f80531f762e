"""Open one authenticated WebSocket to the gateway, or raise the ClientError that says why not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidStatus, WebSocketException

from gateway.client.calls import Params, _frame
from gateway.client.closing import refuses_session
from gateway.client.errors import (
    AuthError,
    ConnectionClosed,
    MethodNotFound,
    ProtocolError,
    TokenExpired,
    Unauthenticated,
    rpc_error,
)

__all__ = ["open_connection"]


async def open_connection(
    url: str,
    *,
    token: str | None,
    auth: Literal["header", "frame"],
    ids: Iterator[int],
    open_timeout: float | None,
    close_timeout: float | None,
    max_frame_bytes: int,
) -> tuple[ClientConnection, Any]:
    """Connect and authenticate within ``open_timeout``; return the socket and the auth result.

    The auth result is what auth.login or auth.whoami answered (None without a
    token, or when the server has no such method). Failures raise AuthError or
    ConnectionClosed; errors from the auth call itself (ProtocolError, RpcError)
    pass through.
    """
    headers = {}
    if token is not None and auth == "header":
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with asyncio.timeout(open_timeout):
            ws = await ws_connect(
                url,
                additional_headers=headers,
                open_timeout=None,
                close_timeout=close_timeout,
                max_size=max_frame_bytes,
            )
            try:
                identity = await _authenticate(ws, token, auth, ids)
            except BaseException:
                await ws.close()
                raise
    except WsConnectionClosed as exc:
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
        if refuses_session(code):
            raise AuthError(
                f"the server refused the session (close {code} {reason})",
                close_code=code,
                reason=reason,
            ) from exc
        raise ConnectionClosed(f"cannot connect to {url}: {exc}", close_code=code) from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            error = AuthError(f"the server refused the credentials (HTTP {status})")
            error.status = status
            raise error from exc
        raise ConnectionClosed(f"cannot connect to {url}: HTTP {status}") from exc
    except (OSError, WebSocketException) as exc:  # TimeoutError is an OSError
        raise ConnectionClosed(f"cannot connect to {url}: {exc!r}") from exc
    return ws, identity


async def _authenticate(
    ws: ClientConnection, token: str | None, auth: Literal["header", "frame"], ids: Iterator[int]
) -> Any:
    """auth.login (frame mode) or auth.whoami (header mode), before the reader starts."""
    if token is None:
        return None
    try:
        if auth == "frame":
            return await _exchange(ws, next(ids), "auth.login", {"token": token})
        return await _exchange(ws, next(ids), "auth.whoami", None)
    except (Unauthenticated, TokenExpired) as exc:
        raise AuthError(f"the server refused the credentials: {exc.message}") from exc
    except MethodNotFound:
        return None


async def _exchange(ws: ClientConnection, id: int, method: str, params: Params) -> Any:
    """Send one request and return its result, skipping any other frame before the answer."""
    await ws.send(orjson.dumps(_frame(method, params, id)), text=True)
    while True:
        raw = await ws.recv()
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError(f"a frame that is not JSON: {raw!r:.80}") from exc
        if isinstance(message, dict) and message.get("id") == id:
            if "error" in message:
                raise rpc_error(message["error"])
            return message.get("result")
