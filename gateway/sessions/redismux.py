"""One multiplexed RESP3 connection per process: pipelined calls, ordered replies, invalidations.

Every Lua script of the stores goes out on this connection (see
:meth:`gateway.sessions.redislink.RedisLink.eval`). Calls made in one loop
tick are written together; Redis answers in order, so one reader task
matches replies to calls first in, first out. This skips redis-py's
per-command machinery (a pooled connection, a timer and a task per call):
the client cost of a call is packing it, a share of one write and one
parse.

The same connection carries **client-side caching** invalidations
(``CLIENT TRACKING ON BCAST PREFIX <p> NOLOOP``): Redis pushes the name of
every key under a tracked prefix that any other connection changed (or that
expired, was evicted or flushed; ``None`` means "everything"). ``NOLOOP``
keeps plain writes made on this connection from coming back. Redis 7.0 still
pushes writes made inside Lua scripts back to the connection that made them,
so the writer's own entry is evicted just after its reply. That is correct,
at the price of one later read. Because replies and pushes share one ordered stream, a reply
applied by its ``on_reply`` callback (run by the reader, before the next
message is read) can never overwrite a later invalidation.

A cache may be trusted only while :meth:`fresh` says so: the connection is
up, something was heard from Redis within ``1.5 × timeout`` (a ``PING`` goes
out after ``timeout / 2`` of silence), and no bytes are waiting unread (they
may hold an invalidation). A call unanswered after ``timeout`` breaks the
connection; breaking fails every pending call with ``StoreUnavailable`` and
calls ``on_lost``, whose owner flushes the caches, so a cache never outlives
the connection whose invalidations it relied on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import select
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from hiredis import PushNotification
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.exceptions import ResponseError

from gateway.errors import StoreUnavailable

__all__ = ["Invalidated", "OnReply", "RedisMux", "bulk", "resp"]

OnReply = Callable[[Any], None]
"""Called by the reader with a call's reply, in reply order, before later messages."""
Invalidated = Callable[[list[bytes] | None], None]
"""Called with the keys Redis says changed; ``None``: forget everything."""

RETRY_AFTER = 1
READ_SIZE = 65536


def bulk(value: bytes | str | int) -> bytes:
    """One RESP bulk string (``$<len>\\r\\n<bytes>\\r\\n``)."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def resp(*parts: bytes | str | int, then: int = 0) -> bytes:
    """A RESP command of ``parts`` and ``then`` more arguments, packed up to those.

    A caller that sends many alike commands packs their constant start once and
    appends ``bulk(...)`` of each of the ``then`` others per call: far cheaper
    than packing every argument each time (see :meth:`RedisMux.send`).
    """
    out = [b"*%d\r\n" % (len(parts) + then)]
    for part in parts:  # bulk(part), inlined: this packs every argument of every call
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Pending:
    __slots__ = ("count", "future", "on_reply", "replies", "sent")

    def __init__(
        self, future: asyncio.Future[Any] | None, on_reply: OnReply | None, count: int = 0
    ) -> None:
        self.future = future
        self.on_reply = on_reply
        self.sent = time.monotonic()
        self.count = count
        """0: one command; else a batch of that many (its future gets the list of replies)."""
        self.replies: list[Any] = []


class RedisMux:
    """The connection, its pending calls and its health (``connect`` again after a loss)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        on_lost: Callable[[BaseException], None],
        on_invalidate: Invalidated,
    ) -> None:
        self._pool = aioredis.ConnectionPool.from_url(
            url,
            protocol=3,
            socket_timeout=None,
            socket_connect_timeout=timeout,
            parser_class=_AsyncHiredisParser,  # the reader parses with it (see _read)
        )
        self.timeout = timeout
        self.prefixes: list[str] = []
        """Key prefixes to track; set before :meth:`connect`."""
        self._on_lost = on_lost
        self._on_invalidate = on_invalidate
        self._conn: Any = None
        self._live = False
        self._pending: deque[_Pending] = deque()
        self._out: list[bytes] = []
        self._flush_due = False
        self._tasks: list[asyncio.Task[None]] = []
        self._poll: Any = None
        self.heard = 0.0
        self.tracking = False

    @property
    def live(self) -> bool:
        return self._live

    async def connect(self) -> None:
        """(Re)open the connection and turn tracking on; raises on failure."""
        await self.close()
        conn = self._pool.make_connection()
        try:
            await conn.connect()
            if self.prefixes:
                args = ["CLIENT", "TRACKING", "ON", "BCAST"]
                for prefix in self.prefixes:
                    args += ["PREFIX", prefix]
                await conn.send_command(*args, "NOLOOP", check_health=False)
                async with asyncio.timeout(self.timeout):
                    await conn.read_response(timeout=math.inf, push_request=True)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        poll = select.poll()
        with contextlib.suppress(Exception):
            poll.register(conn._writer.transport.get_extra_info("socket").fileno(), select.POLLIN)
        self._conn, self._poll = conn, poll
        self._on_invalidate(None)  # Anything cached before this connection is unknown.
        self.tracking = bool(self.prefixes)
        self._live = True
        self.heard = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read(conn)), loop.create_task(self._watch(conn))]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        self._live = self.tracking = False
        self._fail_pending()
        if conn is not None:
            await conn.disconnect(nowait=True)

    def send(
        self, args: Sequence[Any] | bytes, on_reply: OnReply | None = None
    ) -> asyncio.Future[Any]:
        """Queue one command (its arguments, or already packed as RESP bytes); the future
        gets its reply (or the error Redis answered)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._live:
            future.set_exception(StoreUnavailable(data={"retryAfter": RETRY_AFTER}))
            return future
        self._queue(args, _Pending(future, on_reply))
        return future

    def send_all(self, commands: Sequence[Sequence[Any] | bytes]) -> asyncio.Future[list[Any]]:
        """Queue several commands (see :meth:`send`); the future gets the list of their
        replies, in order, an error Redis answered as its exception object in the list."""
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        if not self._live:
            future.set_exception(StoreUnavailable(data={"retryAfter": RETRY_AFTER}))
            return future
        if not commands:
            future.set_result([])
            return future
        for args in commands[:-1]:
            self._queue(args, None)
        self._queue(commands[-1], _Pending(future, None, len(commands)))
        return future

    async def barrier(self) -> None:
        """Return once Redis has written out what earlier calls made it push to others.

        Redis writes a write's invalidations to the other processes' connections in
        the same event-loop pass as the write's reply; a ``PING`` sent after that
        reply is answered in a later pass. So when the ``PONG`` arrives, every
        tracking process on this host already has the invalidation in its socket,
        where :meth:`fresh` sees it.
        """
        await self.send(["PING"])

    async def fresh(self) -> bool:
        """Whether a cache kept by this connection's invalidations may be read now."""
        if not self.tracking or time.monotonic() - self.heard > self.timeout * 1.5:
            return False
        if self._poll.poll(0):
            return False  # Unread bytes in the kernel: maybe an invalidation.
        try:
            return not await self._conn.can_read()
        except Exception:
            return False

    def _queue(self, args: Sequence[Any] | bytes, pending: _Pending | None) -> None:
        """Pack ``args``; ``pending`` waits for its reply (None: a batch's ``_Pending``,
        queued with the batch's last command, waits for it)."""
        if isinstance(args, bytes):
            self._out.append(args)
        else:
            self._out.extend(self._conn.pack_command(*args))
        if pending is not None:
            self._pending.append(pending)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        out, self._out = self._out, []
        if out and self._conn is not None:
            try:
                # One write for every call of this tick (the reader task owns reading).
                self._conn._writer.writelines(out)
            except Exception as exc:
                self._broken(exc)

    async def _read(self, conn: Any) -> None:
        """Match replies to calls until the connection breaks.

        Replies are taken straight from the connection's hiredis reader, as many
        as each socket read completed, with one ``await`` per read rather than
        three per reply (redis-py's ``read_response`` path); the connection's
        handshake went through redis-py, so the reader holds whatever came with it.
        """
        stream, parser = conn._reader, conn._parser._reader
        pending = self._pending
        while True:
            reply = parser.gets()
            if reply is NOT_ENOUGH_DATA:
                try:
                    data = await stream.read(READ_SIZE)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    self._broken(exc)
                    return
                if not data:
                    self._broken(ConnectionError("Redis closed the connection"))
                    return
                parser.feed(data)
                self.heard = time.monotonic()
                continue
            if type(reply) is PushNotification:
                keys = reply[1] if len(reply) > 1 and reply[0] == b"invalidate" else None
                self._on_invalidate(list(keys) if keys is not None else None)
                continue
            if not pending:
                self._broken(RuntimeError("reply without a call"))
                return
            call = pending[0]
            if call.count:
                call.replies.append(reply)
                if len(call.replies) < call.count:
                    continue
                pending.popleft()
                if call.future is not None and not call.future.done():
                    call.future.set_result(call.replies)
                continue
            pending.popleft()
            future = call.future
            if isinstance(reply, ResponseError):
                if future is not None and not future.done():
                    future.set_exception(reply)
                continue
            if call.on_reply is not None:
                call.on_reply(reply)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _watch(self, conn: Any) -> None:
        """Break the connection on a late reply; ping it after half a timeout of silence."""
        step = self.timeout / 4
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            if self._pending and now - self._pending[0].sent > self.timeout:
                self._broken(TimeoutError(f"no reply from Redis within {self.timeout} s"))
                return
            if not self._pending and now - self.heard >= self.timeout / 2:
                self._queue(["PING"], _Pending(None, None))

    def _broken(self, exc: BaseException) -> None:
        if not self._live:
            return
        self._live = self.tracking = False
        self._on_invalidate(None)
        self._fail_pending()
        conn, self._conn = self._conn, None
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        if conn is not None:
            with contextlib.suppress(Exception):
                conn._writer.transport.abort()
        self._on_lost(exc)

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, deque()
        self._out = []
        for call in pending:
            if call.future is not None and not call.future.done():
                call.future.set_exception(StoreUnavailable(data={"retryAfter": RETRY_AFTER}))
