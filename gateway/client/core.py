"""The client: one reconnecting connection, its reader task, and :func:`connect`."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import random
from collections.abc import Awaitable, Generator, Iterable
from types import TracebackType
from typing import Any, Literal

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed as WsConnectionClosed

from gateway.client.calls import Call, NotificationHandler, Params, _frame, _params, _Pending
from gateway.client.closing import close_error, slows_down
from gateway.client.errors import (
    AuthError,
    ClientError,
    ConnectionClosed,
    ConnectionLost,
    ProtocolError,
    RpcError,
    StreamLost,
    rpc_error,
)
from gateway.client.handshake import open_connection
from gateway.client.stream import Stream

__all__ = ["Client", "connect"]

logger = logging.getLogger("gateway.client")

_DEFAULT: Any = object()
"""Marks a timeout argument left out: the client's default applies."""


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
            if id is not None and pending is not None:
                self._withdraw(id, pending)

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
                self._withdraw(id, pending)

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
        pending = _Pending(future, asyncio.Queue() if stream else None, batch=batch, id=id)
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
            self._withdraw(id, pending)
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

    def _withdraw(self, id: int, pending: _Pending) -> None:
        """If ``pending`` still waits for its answer, forget it and cancel it on the server."""
        if self._forget(id, pending):
            self._cancel_later(id)

    async def _send_cancel(self, id: int) -> None:
        """Best effort ``rpc.cancel``; a stream cut off meanwhile is cancelled by its stream id."""
        pending = self._pending.get(id)
        if pending is not None:
            pending.cancelled = True
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
        ws, identity = await open_connection(
            self.url,
            token=self._token,
            auth=self.auth,
            ids=self._ids,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            max_frame_bytes=self.max_frame_bytes,
        )
        self._remember_identity(identity)
        self._ws = ws
        self.connections += 1
        self._ready.set()
        return ws

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
            final = close_error(code, reason, reconnect=self.reconnect)
            if final is not None:
                self._go_down(final)
                return
            self._fail_pending(self._lost_error(ws), keep_resumable=True)
            logger.info("connection lost (close %s %s); reconnecting", code, reason)
            next_ws = await self._reconnect(code)
            if next_ws is None:
                return
            ws = next_ws
            await self._resume_streams(ws)

    async def _resume_streams(self, ws: ClientConnection) -> None:
        """Continue every stream cut off by the drop: ``stream.resume`` after its last seq."""
        for old_id, pending in list(self._pending.items()):
            if pending.stream_id is None or pending.deltas is None:
                continue
            del self._pending[old_id]
            if pending.cancelled:
                # Stopped while the socket was down: stop it on the server too.
                cancel = _frame("stream.cancel", {"streamId": pending.stream_id})
                pending.settle(ConnectionLost("connection lost while the stream was cancelled"))
                with contextlib.suppress(ClientError):
                    await self._send(ws, cancel)
                continue
            pending.id = next(self._ids)
            pending.resumes += 1
            self._pending[pending.id] = pending
            params = {"streamId": pending.stream_id, "after": pending.last_seq}
            try:
                await self._send(ws, _frame("stream.resume", params, pending.id))
            except ClientError:
                return  # dropped again: the next reconnect resumes them

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
        attempt = 2 if slows_down(close_code) else 0
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

    def _fail_pending(self, error: ConnectionLost, *, keep_resumable: bool = False) -> None:
        """Fail what waits; with ``keep_resumable``, streams that have a stream id wait on."""
        pending, self._pending = self._pending, {}
        for id, item in pending.items():
            if keep_resumable and item.stream_id is not None and item.deltas is not None:
                self._pending[id] = item
            else:
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
        if pending.resumes and isinstance(outcome, StreamLost):
            outcome = ConnectionLost(
                f"connection lost and the stream could not be resumed: {outcome}"
            )
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
        reasoning = params.get("reasoning") if text is None else None
        pending = self._pending.get(id) if isinstance(id, int) else None
        if pending is None or pending.deltas is None:
            return  # a stream that was abandoned, or a streaming method used with call()
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq <= pending.last_seq
            or not isinstance(text if reasoning is None else reasoning, str)
        ):
            assert isinstance(id, int)
            del self._pending[id]
            last = pending.last_seq
            pending.settle(ProtocolError(f"stream {id}: delta seq {seq!r} after seq {last}"))
            self._spawn(self._send_cancel(id))
            return
        stream_id = params.get("streamId")
        if isinstance(stream_id, str):
            pending.stream_id = stream_id
        pending.last_seq = seq
        if isinstance(reasoning, str):
            pending.reasoning.append(reasoning)  # positions count it; the text iterator not
        else:
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
