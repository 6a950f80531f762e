"""One connection's JSON-RPC session: requests in, frames out, with no transport.

The session owns what a connection has in flight: it parses frames, checks
and binds each call, runs it as its own task (so a long stream never blocks
another call on the same socket), answers through the bounded
:class:`~gateway.jsonrpc.outbound.Outbound`, and cancels calls on
``rpc.cancel`` or when the connection closes. Exceptions become wire errors
in exactly one place, :meth:`RpcSession._execute`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.context import CallInfo, call_var
from gateway.errors import (
    Cancelled,
    GatewayError,
    InternalError,
    InvalidParams,
    InvalidRequest,
    LimitExceeded,
    MethodNotFound,
)
from gateway.jsonrpc.codec import decode, encode, encode_small
from gateway.jsonrpc.outbound import DeltaStream, Outbound, OutboundClosed
from gateway.jsonrpc.registry import Final, Follow, MethodSpec, Reasoning, Registry
from gateway.streams.protocol import Piece, StreamEnd, current_stream

__all__ = ["Authorize", "CallObserver", "RpcSession", "SessionLimits", "StreamRelay"]

log = logging.getLogger(__name__)

Authorize = Callable[[MethodSpec], contextvars.Context]
"""Admit a call (or raise a GatewayError) and give the context it runs in."""


class CallObserver(Protocol):
    """Told about every call and every response (metrics); must be cheap and never raise."""

    def call_ended(self, method: str, outcome: str, seconds: float) -> None:
        """A call of registered ``method`` ended: ok, error, cancelled or aborted."""

    def call_refused(self, method: object) -> None:
        """A call was refused before it ran; ``method`` is whatever the client sent."""

    def sent(self, message: Any) -> None:
        """A response or a batch of responses is being sent."""


class _NoObserver:
    def call_ended(self, method: str, outcome: str, seconds: float) -> None:
        pass

    def call_refused(self, method: object) -> None:
        pass

    def sent(self, message: Any) -> None:
        pass


_NO_ID = object()


class StreamRelay(Protocol):
    """Logs streaming calls so they outlive their connection (``gateway.streams.hub.StreamHub``)."""

    async def open(self, method: str) -> str:
        """Start a new stream's log, produced by the current task; return its id."""
        ...

    async def produce(
        self,
        stream_id: str,
        source: AsyncGenerator[Any, None],
        deliver: Callable[[str, int], Awaitable[None]],
    ) -> StreamEnd:
        """Log and ``deliver`` each piece of ``source`` (on alone once it raises
        OutboundClosed); how it ended."""
        ...

    def follow(self, stream_id: str, after: int) -> AsyncGenerator[Piece | StreamEnd, None]:
        """The stream's pieces after ``after``, live, then its end."""
        ...

    def cancel(self, stream_id: str) -> bool:
        """Stop the stream now; False if it is not running here."""
        ...


TIME_SLICE = 0.005
"""Seconds a stream may run without yielding to the loop."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    # Limits
    max_inflight: int = 32
    """Calls (requests and notifications) running at once on one connection.

    A batch counts as one call, however many of its items still run
    (``max_batch`` bounds its items, the rate limit its calls): counting its
    items would refuse part of any batch larger than this, although
    ``max_batch`` allows it, and would refuse single calls after it."""
    max_batch: int = 100
    """Items in one batch."""
    # Flood control
    rate: float = 50.0
    """Sustained calls per second (token bucket refill rate)."""
    burst: int = 100
    """Calls allowed at once above the sustained rate."""
    flood_limit: int = 200
    """Flood score at which ``on_abuse("flood")`` is called.

    Each call refused for rate adds 1; the score drains by ``rate`` per
    second (never below 0). Admitted calls do not reset it, so a client that
    keeps sending faster than twice the rate reaches it however the bucket
    refills, and one that waits out ``retryAfter`` never does."""
    garbage_limit: int = 50
    """Frames in a row that are not JSON-RPC before ``on_abuse("garbage")`` is called.

    Any well-formed JSON-RPC message resets the count, whatever its answer."""


@dataclass(slots=True)
class _Call:
    id: Any
    spec: MethodSpec
    notification: bool
    task: asyncio.Task[Any] | None = None
    cancel_requested: bool = False
    started: bool = False
    stream_id: str | None = None
    """The logged stream this call produces or follows (rpc.cancel stops that stream)."""


@dataclass(slots=True)
class _Bucket:
    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def _id_key(id_: Any) -> tuple[str, Any]:
    return (type(id_).__name__, id_)


def _error(id_: Any, exc: GatewayError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": exc.to_error(), "id": id_}


def _join(group: dict[asyncio.Task[Any], None], task: asyncio.Task[Any]) -> None:
    """Add ``task`` to ``group`` until it is done."""
    group[task] = None
    task.add_done_callback(group.pop)


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


class RpcSession:
    """JSON-RPC 2.0 over any message transport: feed it text, drain ``outbound``."""

    def __init__(
        self,
        registry: Registry,
        outbound: Outbound,
        *,
        authorize: Authorize,
        limits: SessionLimits = SessionLimits(),
        on_abuse: Callable[[str], None] | None = None,
        streams: StreamRelay | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        self._registry = registry
        self._streams = streams
        self.outbound = outbound
        self._authorize = authorize
        self._limits = limits
        self._on_abuse = on_abuse
        self._observer = observer or _NoObserver()
        self._garbage_in_a_row = 0
        self._bucket = _Bucket(rate=limits.rate, burst=limits.burst, tokens=limits.burst)
        self._flood_score = 0.0
        self._flood_stamp = time.monotonic()
        self._inflight: dict[tuple[str, Any], _Call] = {}
        # Task groups are dicts used as sets: an empty dict is 64 bytes, an empty set 216,
        # and every idle connection holds four. Each task leaves its groups when done.
        self._tasks: dict[asyncio.Task[Any], None] = {}
        """Every task this session started (close() cancels all but the producers)."""
        self._producers: dict[asyncio.Task[Any], None] = {}
        """Calls producing a logged stream: close() leaves them running (the stream log's)."""
        self._relays: dict[asyncio.Task[Any], None] = {}
        """Calls relaying a logged stream (stream.resume): a client can resume them elsewhere."""
        self._units: dict[asyncio.Task[Any], None] = {}
        """Tasks counted by ``max_inflight``: one per single call, one per batch."""
        self._closing = False

    # Inbound

    async def handle_text(self, text: str | bytes) -> None:
        """Handle one inbound frame. Never raises for anything the client sent."""
        try:
            message = decode(text)
        except GatewayError as exc:
            self._garbage()
            await self._send(_error(None, exc))
            return
        if isinstance(message, list):
            if not message:
                self._garbage()
                await self._send(_error(None, InvalidRequest("Invalid Request: empty batch")))
            elif len(message) > self._limits.max_batch:
                await self._send(
                    _error(
                        None,
                        InvalidRequest(
                            f"Invalid Request: batch over {self._limits.max_batch} items"
                        ),
                    )
                )
            elif len(self._units) >= self._limits.max_inflight:
                await self._send(_error(None, self._too_many_inflight()))
            else:
                # Started now, in arrival order: admission and the garbage count are
                # decided before the next frame is read.
                started = [self._start(item, in_batch=True) for item in message]
                self._count(self._spawn(self._run_batch(started), contextvars.copy_context()))
            return
        response = self._start(message, in_batch=False)
        if isinstance(response, dict):
            await self._send(response)

    def _start(self, item: Any, *, in_batch: bool) -> dict[str, Any] | asyncio.Task[Any] | None:
        """Validate and launch one call: an error response, the call's task, or None."""
        id_ = item.get("id", _NO_ID) if isinstance(item, dict) else _NO_ID
        is_notification = id_ is _NO_ID
        reply_id = id_ if not is_notification and _valid_id(id_) else None
        try:
            method, params = self._validate(item)
            # Well-formed JSON-RPC, whatever its answer: not garbage.
            self._garbage_in_a_row = 0
            if method == "rpc.cancel":
                return self._cancel_from(params, id_)
            spec = self._registry.get(method)
            if spec is None:
                raise MethodNotFound(f"Method not found: {method}")
            self._admit()
            context = self._authorize(spec)
            bound = spec.bind(params)
            if not in_batch and len(self._units) >= self._limits.max_inflight:
                raise self._too_many_inflight()
        except GatewayError as exc:
            self._observer.call_refused(item.get("method") if isinstance(item, dict) else None)
            if isinstance(exc, InvalidRequest):
                self._garbage()
            elif is_notification:
                return None
            return _error(reply_id, exc)
        if is_notification and spec.streaming:
            # Nobody could read its deltas or cancel it (they would carry id null):
            # a streaming method called as a notification is not run at all.
            return None
        call = _Call(id=None if is_notification else id_, spec=spec, notification=is_notification)
        context.run(call_var.set, CallInfo(call.id, spec.name, spec.streaming))
        if not is_notification:
            key = _id_key(id_)
            if key in self._inflight:
                self._observer.call_refused(spec.name)
                return _error(id_, InvalidRequest("Invalid Request: this id is already in flight"))
            self._inflight[key] = call
        # One coroutine per task: a task cancelled before it starts leaves no inner
        # coroutine behind un-awaited.
        if in_batch:
            runner = self._execute(call, bound.args, bound.kwargs)
        else:
            runner = self._answer(call, bound.args, bound.kwargs)
        call.task = self._spawn(runner, context)
        if not in_batch:
            self._count(call.task)
        return call.task

    def _validate(self, item: Any) -> tuple[str, Any]:
        if not isinstance(item, dict):
            raise InvalidRequest("Invalid Request: expected an object")
        if item.get("jsonrpc") != "2.0":
            raise InvalidRequest('Invalid Request: "jsonrpc" must be "2.0"')
        method = item.get("method")
        if not isinstance(method, str):
            raise InvalidRequest('Invalid Request: "method" must be a string')
        if "id" in item and not _valid_id(item["id"]):
            raise InvalidRequest('Invalid Request: "id" must be a string, number or null')
        params = item.get("params")
        if "params" in item and not isinstance(params, list | dict):
            raise InvalidRequest('Invalid Request: "params" must be an array or an object')
        extra = set(item) - {"jsonrpc", "method", "params", "id"}
        if extra:
            raise InvalidRequest(f"Invalid Request: unknown members {sorted(extra)}")
        return method, params

    def _too_many_inflight(self) -> LimitExceeded:
        most = self._limits.max_inflight
        return LimitExceeded(
            f"Too many calls in flight on this connection (max {most})",
            {"limit": "inflightPerConnection", "max": most},
        )

    def _garbage(self) -> None:
        self._garbage_in_a_row += 1
        if self._garbage_in_a_row >= self._limits.garbage_limit and self._on_abuse is not None:
            self._on_abuse("garbage")

    def _admit(self) -> None:
        wait = self._bucket.take()
        if not wait:
            return
        now = time.monotonic()
        drained = (now - self._flood_stamp) * self._limits.rate
        self._flood_score = max(0.0, self._flood_score - drained) + 1
        self._flood_stamp = now
        # "More than limit - 1": the limit-th refusal counts even if a fraction has drained.
        if self._flood_score > self._limits.flood_limit - 1 and self._on_abuse is not None:
            self._on_abuse("flood")
        raise LimitExceeded(
            "Too many requests on this connection; slow down",
            {"limit": "requestsPerSecond", "retryAfter": round(wait, 3)},
        )

    def _cancel_from(self, params: Any, id_: Any) -> dict[str, Any] | None:
        target = params.get("id", _NO_ID) if isinstance(params, dict) else _NO_ID
        if target is _NO_ID and isinstance(params, list) and len(params) == 1:
            target = params[0]
        if target is _NO_ID or not _valid_id(target):
            if id_ is _NO_ID:
                return None
            return _error(id_, InvalidParams('rpc.cancel needs {"id": <request id>}'))
        found = self.cancel(target)
        if id_ is _NO_ID:
            return None
        return {"jsonrpc": "2.0", "result": {"cancelled": found}, "id": id_}

    def cancel(self, id_: Any) -> bool:
        """Cancel the in-flight request ``id_``; False if there is none."""
        call = self._inflight.get(_id_key(id_))
        if call is None or call.task is None or call.cancel_requested:
            return False
        call.cancel_requested = True
        if call.stream_id is not None and self._streams is not None:
            # The call keeps relaying until the stream's log ends (cancelled, at once).
            self._streams.cancel(call.stream_id)
            return True
        # A task cancelled before its first step never runs a line of _execute (no
        # response, no cleanup): one that has not started sees the flag when it does.
        if call.started:
            call.task.cancel()
        return True

    # Execution

    def _spawn(self, coro: Any, context: contextvars.Context) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, context=context)
        _join(self._tasks, task)
        return task

    def _count(self, task: asyncio.Task[Any]) -> None:
        _join(self._units, task)

    async def _answer(self, call: _Call, args: Any, kwargs: Any) -> None:
        response = await self._execute(call, args, kwargs)
        if response is not None:
            await self._send(response)

    async def _run_batch(self, started: list[dict[str, Any] | asyncio.Task[Any] | None]) -> None:
        responses = []
        for entry in started:
            if isinstance(entry, asyncio.Task):
                try:
                    # Shielded: close() cancels this batch, which must not cancel a call
                    # producing a logged stream (close() cancels the other calls itself).
                    entry = await asyncio.shield(entry)
                except asyncio.CancelledError:
                    if self._closing:
                        raise
                    continue
            if entry is not None:
                responses.append(entry)
        if responses:
            await self._send(responses)

    async def _execute(self, call: _Call, args: Any, kwargs: Any) -> dict[str, Any] | None:
        """Run one call and build its response; the only exception->wire boundary."""
        spec = call.spec
        call.started = True
        response: dict[str, Any] | None = None
        began = time.perf_counter()
        try:
            if call.cancel_requested:
                if not spec.streaming:
                    raise Cancelled()
                result = {"finishReason": "cancelled"}
            elif spec.streaming and self._streams is not None:
                result = await self._produce(call, args, kwargs)
            elif spec.streaming:
                result = await self._stream(call, args, kwargs)
            else:
                result = await spec.fn(*args, **kwargs)
                if isinstance(result, Follow) and self._streams is not None:
                    result = await self._relay(call, result.stream_id, result.after)
        except asyncio.CancelledError:
            if self._closing or not call.cancel_requested:
                raise
            _uncancel()
            response = _error(call.id, Cancelled())
        except GatewayError as exc:
            response = _error(call.id, exc)
        except OutboundClosed:
            return None
        except Exception:
            log.exception("method %s failed", spec.name)
            response = _error(call.id, InternalError())
        else:
            response = {"jsonrpc": "2.0", "result": result, "id": call.id}
        finally:
            if not call.notification:
                self._inflight.pop(_id_key(call.id), None)
            outcome = _outcome(response)
            if outcome == "cancelled" and self.outbound.closed and not call.cancel_requested:
                # A logged stream its socket's close stopped (nobody resumed it in time).
                outcome = "aborted"
            self._observer.call_ended(spec.name, outcome, time.perf_counter() - began)
        return None if call.notification else response

    async def _stream(self, call: _Call, args: Any, kwargs: Any) -> Any:
        agen = call.spec.fn(*args, **kwargs)
        stream = DeltaStream(encode_small(call.id))
        final: Any = None
        loop = asyncio.get_running_loop()
        slice_start = loop.time()
        try:
            try:
                async for item in agen:
                    if isinstance(item, Final):
                        final = item.result
                        break
                    await self.outbound.put_delta(stream, item)
                    # A generator that never waits (an upstream burst already buffered)
                    # must not hold the loop: let others run every few milliseconds.
                    if loop.time() - slice_start > TIME_SLICE:
                        await asyncio.sleep(0)
                        slice_start = loop.time()
            except asyncio.CancelledError:
                if self._closing or not call.cancel_requested:
                    raise
                _uncancel()
                # The generator may be parked at a yield: let it say how it ended.
                if agen.ag_frame is not None:
                    try:
                        item = await agen.athrow(asyncio.CancelledError())
                        if isinstance(item, Final):
                            final = item.result
                    except (StopAsyncIteration, asyncio.CancelledError):
                        pass
                if final is None:
                    final = {"finishReason": "cancelled"}
            if call.cancel_requested and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                _uncancel()
        finally:
            await agen.aclose()
        return {"finishReason": "stop"} if final is None else final

    async def _produce(self, call: _Call, args: Any, kwargs: Any) -> Any:
        """Run a streaming method into its stream's log, delivering here while connected."""
        assert self._streams is not None
        task = asyncio.current_task()
        assert task is not None
        stream_id = await self._streams.open(call.spec.name)
        call.stream_id = stream_id
        current_stream.set(stream_id)  # this call's own context (a copy per call)
        _join(self._producers, task)
        stream = DeltaStream(encode_small(call.id), b',"streamId":' + orjson.dumps(stream_id))
        # A partial, not a wrapper coroutine: one coroutine per piece, as without the log.
        deliver = functools.partial(self.outbound.put_delta, stream)
        end = await self._streams.produce(stream_id, call.spec.fn(*args, **kwargs), deliver)
        if end.error is not None:
            raise _LoggedError(end.error)
        return end.result

    async def _relay(self, call: _Call, stream_id: str, after: int) -> Any:
        """Relay a logged stream's pieces after ``after`` as this call's deltas, then its result."""
        assert self._streams is not None
        call.stream_id = stream_id
        task = asyncio.current_task()
        if task is not None:
            _join(self._relays, task)
        if call.cancel_requested:
            self._streams.cancel(stream_id)
        head = b',"streamId":' + orjson.dumps(stream_id)
        stream = DeltaStream(encode_small(call.id), head)
        follower = self._streams.follow(stream_id, after)
        put_delta = self.outbound.put_delta
        loop = asyncio.get_running_loop()
        slice_start = loop.time()
        try:
            async for item in follower:
                if isinstance(item, StreamEnd):
                    if item.error is not None:
                        raise _LoggedError(item.error)
                    return item.result
                text = Reasoning(item.text) if item.kind == "reasoning" else item.text
                await put_delta(stream, text, item.pos)
                if loop.time() - slice_start > TIME_SLICE:
                    await asyncio.sleep(0)
                    slice_start = loop.time()
        finally:
            await follower.aclose()
        raise InternalError()  # a log always ends with its StreamEnd

    async def _send(self, message: Any) -> None:
        self._observer.sent(message)
        try:
            frame = encode(message)
        except (TypeError, ValueError, RecursionError):
            frame = encode(_unencodable(message))
        try:
            await self.outbound.put(frame)
        except OutboundClosed:
            pass

    # Lifecycle

    @property
    def inflight(self) -> int:
        """Tasks running: one per call, plus one per batch."""
        return len(self._tasks)

    @property
    def inflight_unlogged(self) -> int:
        """:attr:`inflight` less the calls producing or relaying a logged stream (their
        client can resume them on another process)."""
        return len(self._tasks) - len(self._producers) - len(self._relays)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Cancel everything in flight and wait for it; only streams being logged go on."""
        self._closing = True
        self.outbound.close()
        # A call producing a logged stream goes on without the connection (see StreamRelay).
        tasks = [task for task in self._tasks if task not in self._producers]
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.error("call task did not stop within %.1fs of close: %r", timeout, task)


class _LoggedError(GatewayError):
    """A stream's logged error, answered as it was recorded."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "")))
        self.error = error

    def to_error(self) -> dict[str, Any]:
        return self.error


def _unencodable(message: Any) -> Any:
    """``message`` with each response JSON cannot hold replaced by -32603 (a bug to log)."""
    if isinstance(message, list):
        return [_unencodable(item) for item in message]
    try:
        encode(message)
    except (TypeError, ValueError, RecursionError):
        log.exception("cannot encode the response to id %r", message.get("id"))
        return _error(message.get("id"), InternalError())
    return message


def _outcome(response: dict[str, Any] | None) -> str:
    if response is None:
        return "aborted"  # the connection went away
    error = response.get("error")
    if error is not None:
        return "cancelled" if error["code"] == Cancelled.code else "error"
    result = response["result"]
    finish = result.get("finishReason") if isinstance(result, dict) else None
    if finish == "cancelled":
        return "cancelled"
    return "error" if finish == "error" else "ok"


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()
