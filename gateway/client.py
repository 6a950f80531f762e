"""An asyncio client for the gateway: calls, streams, batches, notifications, reconnects.

    async with connect("ws://127.0.0.1:8765/ws", token="tok-alice") as client:
        models = await client.call("chat.listModels")
        async for text in client.stream("chat.postChat", message="hi"):
            print(text, end="")

One reader task per connection routes responses by id and ``stream.delta``
notifications to their stream. Delivery is at most once: a call in flight when
the socket drops fails with :class:`ConnectionLost` and is never sent again.
The client then reconnects (exponential backoff with jitter) and authenticates
again, so calls made afterwards work; close codes 4500-4999 (and 1000, 1003,
1007-1010) end the client for good.

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
    │   └── UpstreamError          -32010..-32015  (.retryable, .retry_after)
    └── ConnectionLost         the socket dropped with this call in flight; it may have run
        └── ConnectionClosed   no connection now or later: closed by you, the first connect
            │                  failed, a final close code, or reconnect=False
            └── AuthError      refused: HTTP 401/403 at the handshake, a failed auth.login,
                               or close 4500-4999 (bad/expired token, auth timeout, limits)
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.exceptions import InvalidStatus, WebSocketException

from gateway.errors import ErrorCode

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
    "TokenExpired",
    "Unauthenticated",
    "UpstreamError",
    "connect",
]

logger = logging.getLogger("gateway.client")

Params = dict[str, Any] | list[Any] | None
"""JSON-RPC params: by name, by position, or none."""
NotificationHandler = Callable[[str, Any], object]
"""``on_notification(method, params)``; may return an awaitable, which runs as a task."""

_DEFAULT: Any = object()
"""Marks a timeout argument left out: the client's default applies."""

_RECONNECT_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013})


# Exceptions


class ClientError(Exception):
    """Root of every error this module raises (besides TimeoutError and TypeError)."""


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


# Calls and streams


@dataclass(frozen=True, slots=True)
class Call:
    """One item of :meth:`Client.batch`; ``notify`` sends it without an id (its result is None)."""

    method: str
    params: Params = None
    notify: bool = False


@dataclass(eq=False, slots=True)
class _Pending:
    """A request waiting for its response; streams also queue their deltas (None ends them)."""

    future: asyncio.Future[Any]
    deltas: asyncio.Queue[str | None] | None = None
    next_seq: int = 0
    batch: bool = False

    def settle(self, outcome: Any) -> None:
        if not self.future.done():
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)
        if self.deltas is not None:
            self.deltas.put_nowait(None)


def _params(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Params:
    if args and kwargs:
        raise TypeError("pass params by position or by name, not both")
    return list(args) if args else dict(kwargs) if kwargs else None


def _frame(method: str, params: Params, id: int | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        frame["params"] = params
    if id is not None:
        frame["id"] = id
    return frame


class Stream:
    """The text deltas of one streaming call; iterate it once.

    When iteration ends, ``result`` holds the final result (``finishReason``,
    ``model``, ``usage``) and ``text`` everything that streamed. A method that
    does not stream yields nothing and leaves its result in ``result``.

    Leaving early sends ``rpc.cancel``: :meth:`aclose` (or leaving ``async with``)
    does so and waits for the final result; a timeout or a cancelled task does so
    at once. A plain ``break`` is noticed when the stream is garbage-collected,
    which in CPython is right after the loop unless you hold a reference: if you
    do, call :meth:`aclose`.
    """

    def __init__(self, client: Client, method: str, params: Params, idle_timeout: float | None):
        self.method = method
        self.params = params
        self.idle_timeout = idle_timeout
        self.id: int | None = None
        self.result: Any = None
        self._client = client
        self._parts: list[str] = []
        self._pending: _Pending | None = None
        self._done = False

    @property
    def text(self) -> str:
        """All text received so far."""
        return "".join(self._parts)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> str:
        if self._done:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout(self.idle_timeout):
                if self._pending is None:
                    self.id, self._pending = await self._client._start(self.method, self.params)
                assert self._pending.deltas is not None
                text = await self._pending.deltas.get()
        except BaseException:
            await self._abandon()
            raise
        if text is None:
            self._done = True
            self.result = self._pending.future.result()
            raise StopAsyncIteration
        self._parts.append(text)
        return text

    async def aclose(self) -> None:
        """Cancel the stream if it is running and wait (``idle_timeout``) for its final result."""
        if self._done:
            return
        self._done = True
        pending = self._pending
        if pending is None or self.id is None:
            return
        assert pending.deltas is not None
        await self._client._send_cancel(self.id)
        try:
            async with asyncio.timeout(self.idle_timeout):
                while (text := await pending.deltas.get()) is not None:
                    self._parts.append(text)
            self.result = pending.future.result()
        except (ClientError, TimeoutError) as exc:
            logger.debug("stream %s ended with %r while closing", self.id, exc)
        finally:
            self._client._forget(self.id, pending)

    async def _abandon(self) -> None:
        if self._done:
            return
        self._done = True
        if self.id is not None and self._pending is not None:
            self._client._forget(self.id, self._pending)
            await self._client._send_cancel(self.id)

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._done and self.id is not None:
            self._client._cancel_later(self.id)


# The client


class Client:
    """A reconnecting connection to the gateway; open one with :func:`connect`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        auth: Literal["header", "frame"] = "header",
        reconnect: bool = True,
        on_notification: NotificationHandler | None = None,
        # Timeouts (seconds; None waits forever)
        open_timeout: float | None = 10.0,
        call_timeout: float | None = 60.0,
        stream_timeout: float | None = 60.0,
        close_timeout: float | None = 5.0,
        # Reconnect backoff (seconds): the n-th retry waits min(max, min * 2**n), jittered
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        # Limits
        max_frame_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        """See :func:`connect`; ``stream_timeout`` bounds the wait for each delta."""
        if auth not in ("header", "frame"):
            raise ValueError("auth must be 'header' or 'frame'")
        self.url = url
        self.auth = auth
        self.reconnect = reconnect
        self.on_notification = on_notification
        self.open_timeout = open_timeout
        self.call_timeout = call_timeout
        self.stream_timeout = stream_timeout
        self.close_timeout = close_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_frame_bytes = max_frame_bytes
        self.user: dict[str, Any] | None = None
        """The authenticated user (from auth.login or auth.whoami), refreshed on reconnect."""
        self.expires_at: int | None = None
        self.connections = 0
        """How many times a connection was established and authenticated (1 + reconnects)."""
        self._token = token
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()  # set while connected, or once closed for good
        self._fatal: ConnectionClosed | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def token(self) -> str | None:
        """The token used for the next (re)authentication."""
        return self._token

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._fatal is None

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered (streams included)."""
        return len(self._pending)

    # Public calls

    async def call(self, method: str, /, *args: Any, **params: Any) -> Any:
        """Call ``method`` with params by position or by name (not both); return its result.

        Raises RpcError (a subclass for well-known codes), ConnectionLost, or
        TimeoutError after ``call_timeout``. A streaming method's deltas are
        dropped and its final result returned; use :meth:`stream` for the text.
        """
        return await self.request(method, _params(args, params))

    async def request(
        self, method: str, params: Params = None, *, timeout: float | None = _DEFAULT
    ) -> Any:
        """:meth:`call` with explicit params and ``timeout`` (default ``call_timeout``).

        On timeout or cancellation the server is sent ``rpc.cancel`` for the call.
        """
        timeout = self.call_timeout if timeout is _DEFAULT else timeout
        id, pending = None, None
        try:
            async with asyncio.timeout(timeout):
                id, pending = await self._start(method, params, stream=False)
                return await pending.future
        finally:
            if id is not None and pending is not None and self._forget(id, pending):
                self._cancel_later(id)

    def stream(self, method: str, /, *args: Any, **params: Any) -> Stream:
        """Start ``method`` when first iterated; yields its text deltas (see :class:`Stream`)."""
        return Stream(self, method, _params(args, params), self.stream_timeout)

    def request_stream(
        self, method: str, params: Params = None, *, idle_timeout: float | None = _DEFAULT
    ) -> Stream:
        """:meth:`stream` with explicit params and ``idle_timeout`` (default ``stream_timeout``)."""
        idle = self.stream_timeout if idle_timeout is _DEFAULT else idle_timeout
        return Stream(self, method, params, idle)

    async def notify(self, method: str, /, *args: Any, **params: Any) -> None:
        """Send a notification (no id, no answer)."""
        async with asyncio.timeout(self.call_timeout):
            ws = await self._connection()
            await self._send(ws, _frame(method, _params(args, params)))

    async def batch(
        self, calls: Iterable[Call | tuple[str, Params]], *, timeout: float | None = _DEFAULT
    ) -> list[Any]:
        """Send ``calls`` as one JSON-RPC batch and return their results in the same order.

        An item that failed is its RpcError instance, not raised; connection loss and
        timeouts raise. Notification items (``Call(..., notify=True)``) give None.
        """
        items = [c if isinstance(c, Call) else Call(c[0], c[1]) for c in calls]
        if not items:
            raise ValueError("a batch needs at least one call")
        timeout = self.call_timeout if timeout is _DEFAULT else timeout
        registered: list[tuple[int, _Pending]] = []
        try:
            async with asyncio.timeout(timeout):
                ws = await self._connection()
                frames: list[dict[str, Any]] = []
                futures: list[asyncio.Future[Any] | None] = []
                for item in items:
                    if item.notify:
                        frames.append(_frame(item.method, item.params))
                        futures.append(None)
                        continue
                    id, pending = self._register(stream=False, batch=True)
                    registered.append((id, pending))
                    frames.append(_frame(item.method, item.params, id))
                    futures.append(pending.future)
                await self._send(ws, frames)
                outcomes = []
                for fut in futures:
                    try:
                        outcomes.append(None if fut is None else await fut)
                    except RpcError as exc:
                        outcomes.append(exc)
                return outcomes
        finally:
            for id, pending in registered:
                if self._forget(id, pending):
                    self._cancel_later(id)

    async def refresh(self, token: str) -> Any:
        """Swap this connection's credentials (auth.refresh); reconnects use the new token."""
        result = await self.call("auth.refresh", token=token)
        self._token = token
        self._remember_identity(result)
        return result

    async def close(self) -> None:
        """Close the connection; calls in flight and later fail with ConnectionClosed."""
        self._go_down(ConnectionClosed("the client was closed", close_code=1000))
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                async with asyncio.timeout(self.close_timeout):
                    await ws.close()
            except TimeoutError:
                logger.debug("close handshake timed out")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> Client:
        if self._supervisor is None:
            await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Requests: registration, sending, cancelling

    def _register(self, *, stream: bool, batch: bool = False) -> tuple[int, _Pending]:
        id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # Nobody may await a future whose stream was dropped; don't warn about it.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        pending = _Pending(future, asyncio.Queue() if stream else None, batch=batch)
        self._pending[id] = pending
        return id, pending

    async def _start(
        self, method: str, params: Params, *, stream: bool = True
    ) -> tuple[int, _Pending]:
        ws = await self._connection()
        id, pending = self._register(stream=stream)
        try:
            await self._send(ws, _frame(method, params, id))
        except BaseException:
            # Cancelled while flushing: the frame may have gone out, so cancel it too.
            if self._forget(id, pending):
                self._cancel_later(id)
            raise
        return id, pending

    async def _send(self, ws: ClientConnection, message: dict[str, Any] | list[Any]) -> None:
        try:
            await ws.send(orjson.dumps(message), text=True)
        except WsConnectionClosed as exc:
            raise self._lost_error(ws) from exc

    def _forget(self, id: int, pending: _Pending) -> bool:
        """Drop ``pending`` if it is still waiting; True if it was."""
        if self._pending.get(id) is pending:
            del self._pending[id]
            return True
        return False

    async def _send_cancel(self, id: int) -> None:
        """Best effort ``rpc.cancel``: a lost connection has cancelled everything anyway."""
        ws = self._ws
        if ws is None:
            return
        try:
            async with asyncio.timeout(self.close_timeout):
                await ws.send(orjson.dumps(_frame("rpc.cancel", {"id": id})), text=True)
        except (WsConnectionClosed, TimeoutError) as exc:
            logger.debug("rpc.cancel for %s not sent: %r", id, exc)

    def _cancel_later(self, id: int) -> None:
        """Forget ``id`` and send rpc.cancel from a task; safe in ``__del__`` and other threads."""
        self._pending.pop(id, None)  # atomic, so fine from any thread
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def schedule() -> None:
            if self._ws is not None:
                self._spawn(self._send_cancel(id))

        try:
            loop.call_soon_threadsafe(schedule)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Connection lifecycle

    async def _open(self) -> Client:
        """Connect and authenticate once (raising on failure), then start the reader."""
        if self._supervisor is not None:
            raise RuntimeError("this client is already open")
        self._loop = asyncio.get_running_loop()
        ws = await self._establish()
        self._supervisor = asyncio.create_task(
            self._supervise(ws), name=f"gateway-client {self.url}"
        )
        return self

    async def _establish(self) -> ClientConnection:
        headers = {}
        if self._token is not None and self.auth == "header":
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            async with asyncio.timeout(self.open_timeout):
                ws = await ws_connect(
                    self.url,
                    additional_headers=headers,
                    open_timeout=None,
                    close_timeout=self.close_timeout,
                    max_size=self.max_frame_bytes,
                )
                try:
                    await self._authenticate(ws)
                except BaseException:
                    await ws.close()
                    raise
        except WsConnectionClosed as exc:
            code, reason = exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""
            if code is not None and 4500 <= code < 5000:
                raise AuthError(
                    f"the server refused the session (close {code} {reason})",
                    close_code=code,
                    reason=reason,
                ) from exc
            raise ConnectionClosed(f"cannot connect to {self.url}: {exc}", close_code=code) from exc
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                error = AuthError(f"the server refused the credentials (HTTP {status})")
                error.status = status
                raise error from exc
            raise ConnectionClosed(f"cannot connect to {self.url}: HTTP {status}") from exc
        except (OSError, WebSocketException) as exc:  # TimeoutError is an OSError
            raise ConnectionClosed(f"cannot connect to {self.url}: {exc!r}") from exc
        self._ws = ws
        self.connections += 1
        self._ready.set()
        return ws

    async def _authenticate(self, ws: ClientConnection) -> None:
        """auth.login (frame mode) or auth.whoami (header mode), before the reader starts."""
        if self._token is None:
            return
        try:
            if self.auth == "frame":
                result = await self._exchange(ws, "auth.login", {"token": self._token})
            else:
                result = await self._exchange(ws, "auth.whoami", None)
        except (Unauthenticated, TokenExpired) as exc:
            raise AuthError(f"the server refused the credentials: {exc.message}") from exc
        except MethodNotFound:
            return
        self._remember_identity(result)

    async def _exchange(self, ws: ClientConnection, method: str, params: Params) -> Any:
        id = next(self._ids)
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

    def _remember_identity(self, result: Any) -> None:
        if isinstance(result, dict):
            self.user = result.get("user", self.user)
            self.expires_at = result.get("expiresAt", self.expires_at)

    async def _supervise(self, ws: ClientConnection) -> None:
        """Read the connection; when it drops, fail what's in flight and reconnect."""
        while True:
            await self._read(ws)
            self._ws = None
            self._ready.clear()
            code, reason = ws.close_code, ws.close_reason or ""
            if self._fatal is not None:
                return
            final = self._final_error(code, reason)
            if final is not None:
                self._go_down(final)
                return
            self._fail_pending(self._lost_error(ws))
            logger.info("connection lost (close %s %s); reconnecting", code, reason)
            next_ws = await self._reconnect(code)
            if next_ws is None:
                return
            ws = next_ws

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    self._on_frame(raw)
                except Exception:  # a bug here must not stop the reader of every call
                    logger.exception("could not handle a frame: %.80r", raw)
        except WsConnectionClosed:
            pass

    async def _reconnect(self, close_code: int | None) -> ClientConnection | None:
        # A flood close (4001) or slow consumer close (4000) asks for a longer first wait.
        attempt = 2 if close_code is not None and 4000 <= close_code < 4500 else 0
        while True:
            cap = min(self.max_backoff, self.min_backoff * 2 ** min(attempt, 30))
            await asyncio.sleep(cap / 2 + random.uniform(0, cap / 2))
            attempt += 1
            try:
                return await self._establish()
            except AuthError as exc:
                self._go_down(exc)
                return None
            except ClientError as exc:
                logger.info("reconnect attempt %d failed: %s", attempt, exc)

    def _final_error(self, code: int | None, reason: str) -> ConnectionClosed | None:
        """The error that ends the client for close ``code``, or None to reconnect."""
        detail = f"close {code}{' ' + reason if reason else ''}"
        if code is not None and 4500 <= code < 5000:
            return AuthError(
                f"the server ended the session ({detail})", close_code=code, reason=reason
            )
        if not self.reconnect:
            return ConnectionClosed(f"connection closed ({detail})", close_code=code, reason=reason)
        if code is None or code in _RECONNECT_CLOSE_CODES or 4000 <= code < 4500:
            return None
        return ConnectionClosed(f"connection closed ({detail})", close_code=code, reason=reason)

    def _lost_error(self, ws: ClientConnection) -> ConnectionLost:
        if self._fatal is not None:
            return copy.copy(self._fatal)
        code, reason = ws.close_code, ws.close_reason or ""
        return ConnectionLost(f"connection lost (close {code})", close_code=code, reason=reason)

    def _go_down(self, error: ConnectionClosed) -> None:
        if self._fatal is None:
            self._fatal = error
        self._ready.set()
        self._fail_pending(error)

    def _fail_pending(self, error: ConnectionLost) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            item.settle(copy.copy(error))

    async def _connection(self) -> ClientConnection:
        """The live connection, waiting while the client reconnects."""
        while True:
            if self._fatal is not None:
                raise copy.copy(self._fatal)
            if self._ws is not None:
                return self._ws
            if self._supervisor is None:
                raise RuntimeError("the client is not open: use `await connect(...)`")
            await self._ready.wait()

    # Incoming frames

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("ignoring a frame that is not JSON: %.80r", raw)
            return
        for item in message if isinstance(message, list) else [message]:
            if not isinstance(item, dict):
                logger.warning("ignoring a message that is not an object: %.80r", item)
            elif "method" in item:
                self._on_notification(item)
            else:
                self._on_response(item)

    def _on_response(self, message: dict[str, Any]) -> None:
        id = message.get("id")
        outcome = rpc_error(message["error"]) if "error" in message else message.get("result")
        if id is None:
            # The server could not read a whole batch (or frame): it answers without an id.
            logger.warning("error without id from the server: %s", outcome)
            if isinstance(outcome, RpcError):
                for key in [k for k, p in self._pending.items() if p.batch]:
                    self._pending.pop(key).settle(copy.copy(outcome))
            return
        pending = self._pending.pop(id, None) if isinstance(id, int) else None
        if pending is None:
            logger.debug("response for an id nobody waits for: %r", id)
            return
        pending.settle(outcome)

    def _on_notification(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params")
        if method == "stream.delta" and isinstance(params, dict):
            self._on_delta(params)
            return
        if "id" in message:
            logger.warning("ignoring a request from the server: %s", method)
            return
        if self.on_notification is None or not isinstance(method, str):
            return
        try:
            outcome = self.on_notification(method, params)
        except Exception:
            logger.exception("on_notification raised for %s", method)
            return
        if isinstance(outcome, Awaitable):
            self._spawn(outcome)

    def _on_delta(self, params: dict[str, Any]) -> None:
        id, seq, text = params.get("id"), params.get("seq"), params.get("text")
        pending = self._pending.get(id) if isinstance(id, int) else None
        if pending is None or pending.deltas is None:
            return  # a stream that was abandoned, or a streaming method used with call()
        if seq != pending.next_seq or not isinstance(text, str):
            assert isinstance(id, int)
            del self._pending[id]
            expected = pending.next_seq
            pending.settle(ProtocolError(f"stream {id}: expected delta seq {expected}, got {seq}"))
            self._spawn(self._send_cancel(id))
            return
        pending.next_seq += 1
        pending.deltas.put_nowait(text)


class _Connecting:
    """What :func:`connect` returns: ``await`` it, or use it with ``async with``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __await__(self) -> Generator[Any, None, Client]:
        return self.client._open().__await__()

    async def __aenter__(self) -> Client:
        return await self.client._open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()


def connect(
    url: str,
    *,
    token: str | None = None,
    reconnect: bool = True,
    open_timeout: float | None = 10.0,
    max_backoff: float = 30.0,
    on_notification: NotificationHandler | None = None,
    auth: Literal["header", "frame"] = "header",
    **options: Any,
) -> _Connecting:
    """Open a client: ``async with connect(url, token=...) as client`` or ``await connect(...)``.

    ``auth="header"`` sends ``Authorization: Bearer``; ``"frame"`` sends auth.login
    as the first frame, as browsers do. Later drops
    reconnect with backoff up to ``max_backoff`` seconds unless ``reconnect=False``.
    The first attempt raises ConnectionClosed (a timeout after ``open_timeout``
    too) or AuthError.
    ``options`` are the other keyword arguments of :class:`Client`.
    """
    client = Client(
        url,
        token=token,
        auth=auth,
        reconnect=reconnect,
        on_notification=on_notification,
        open_timeout=open_timeout,
        max_backoff=max_backoff,
        **options,
    )
    return _Connecting(client)
