"""Runs each streamed answer detached from the connection that asked for it.

:meth:`StreamHub.start` logs the answer's pieces from a task of its own (the
**producer**), so a dropped connection does not stop the generation; the
connection's call, and any later ``stream.resume``, are **followers** that
read the log (:meth:`StreamHub.follow`). A stream with no follower for
``resume_grace`` seconds is cancelled (0: at once, the old
cancel-on-disconnect). A follower on this process that falls more than
``max_lag`` pieces behind makes the producer wait (the old backpressure of a
slow reader), so a connected reader never loses pieces to the log's length
cap; with no follower the producer runs free and the cap bounds memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from gateway.context import current_user
from gateway.errors import GatewayError, InternalError, StreamNotFound
from gateway.jsonrpc.registry import Final
from gateway.streams.protocol import Piece, StreamEnd, StreamInfo, StreamLog, new_stream_id

__all__ = ["StreamHub"]

log = logging.getLogger(__name__)

TIME_SLICE = 0.005
"""Seconds a producer may run without yielding to the loop."""


class _Run:
    """A stream this process is producing."""

    __slots__ = ("cancelled", "head", "readers", "room", "stream_id", "task", "timer", "user_id")

    def __init__(self, stream_id: str, user_id: str) -> None:
        self.stream_id = stream_id
        self.user_id = user_id
        self.task: asyncio.Task[None] | None = None
        self.head = -1
        """Position of the last piece logged."""
        self.readers: dict[object, int] = {}
        """Followers on this process -> the last position each has taken."""
        self.room: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.cancelled = False

    def lag(self) -> int:
        return self.head - min(self.readers.values()) if self.readers else 0

    def wake(self) -> None:
        room, self.room = self.room, None
        if room is not None and not room.done():
            room.set_result(None)


class StreamHub:
    """Producers and followers of this process's streams, over one :class:`StreamLog`."""

    def __init__(
        self,
        stream_log: StreamLog,
        *,
        # Timeouts (seconds)
        resume_grace: float = 60.0,
        # Limits
        max_lag: int = 256,
        node: str = "",
    ) -> None:
        self.log = stream_log
        self.resume_grace = resume_grace
        self.max_lag = max_lag
        self.node = node
        self._runs: dict[str, _Run] = {}

    @property
    def running(self) -> int:
        """Streams this process is producing now."""
        return len(self._runs)

    # Producing

    async def start(self, source: AsyncGenerator[Any, None], method: str) -> str:
        """Log ``source``'s pieces from a detached task; return the new stream's id.

        ``source`` yields text pieces (``str``, or objects with ``text`` and
        ``kind``) and may end with a :class:`Final`. Its first step runs in the
        caller's context (the user, the connection), copied.
        """
        user = current_user()
        stream_id = new_stream_id()
        info = StreamInfo(stream_id, user.id, method, time.time(), owner=self.node)
        await self.log.create(info)
        run = _Run(stream_id, user.id)
        self._runs[stream_id] = run
        run.task = asyncio.get_running_loop().create_task(
            self._produce(run, source), context=contextvars.copy_context()
        )
        if self.resume_grace > 0:
            self._arm(run)  # until its first follower comes (the caller follows at once)
        return stream_id

    async def _produce(self, run: _Run, source: AsyncGenerator[Any, None]) -> None:
        loop = asyncio.get_running_loop()
        append = self.log.append
        stream_id = run.stream_id
        end: StreamEnd | None = None
        slice_start = loop.time()
        try:
            try:
                async for item in source:
                    if isinstance(item, Final):
                        end = StreamEnd(item.result)
                        break
                    if isinstance(item, str):
                        run.head = append(stream_id, item)
                    else:
                        run.head = append(stream_id, item.text, item.kind)
                    while run.readers and run.lag() > self.max_lag:
                        run.room = loop.create_future()
                        await run.room
                    if loop.time() - slice_start > TIME_SLICE:
                        await asyncio.sleep(0)
                        slice_start = loop.time()
            except asyncio.CancelledError:
                _uncancel()
                # The generator may be parked at a yield: let it say how it ended.
                if getattr(source, "ag_frame", None) is not None:
                    try:
                        item = await source.athrow(asyncio.CancelledError())
                        if isinstance(item, Final):
                            end = StreamEnd(item.result)
                    except (StopAsyncIteration, asyncio.CancelledError):
                        pass
                if end is None:
                    end = StreamEnd({"finishReason": "cancelled"})
            except GatewayError as exc:
                end = StreamEnd(error=exc.to_error())
            except Exception:
                log.exception("stream %s failed", stream_id)
                end = StreamEnd(error=InternalError().to_error())
            if run.cancelled:
                _uncancel()
            with contextlib.suppress(Exception):
                await source.aclose()
        finally:
            if end is None:
                end = StreamEnd({"finishReason": "stop"})
            if end.error is None and isinstance(end.result, dict):
                end = StreamEnd({**end.result, "streamId": stream_id})
            if run.timer is not None:
                run.timer.cancel()
            self._runs.pop(stream_id, None)
            await self.log.finish(stream_id, end)

    # Following

    async def follow(self, stream_id: str, after: int) -> AsyncGenerator[Piece | StreamEnd, None]:
        """Replay the pieces after ``after``, then the live ones, then the end (see StreamLog.read).

        While it runs, the stream counts as followed (no grace timer); the
        caller checks ownership first.
        """
        run = self._runs.get(stream_id)
        token = object()
        if run is not None:
            run.readers[token] = after
            if run.timer is not None:
                run.timer.cancel()
                run.timer = None
        try:
            async for item in self.log.read(stream_id, after):
                yield item
                if run is not None and isinstance(item, Piece):
                    run.readers[token] = item.pos
                    if run.room is not None and run.lag() <= self.max_lag:
                        run.wake()
        finally:
            if run is not None:
                run.readers.pop(token, None)
                run.wake()
                if not run.readers and stream_id in self._runs:
                    self._arm(run)

    def _arm(self, run: _Run) -> None:
        """No follower now: cancel the stream unless one comes within ``resume_grace``."""
        if run.timer is not None:
            run.timer.cancel()
        if self.resume_grace <= 0:
            run.timer = None
            self._cancel_run(run)
        else:
            run.timer = asyncio.get_running_loop().call_later(
                self.resume_grace, self._cancel_run, run
            )

    # Cancelling

    async def owned(self, stream_id: str, user_id: str) -> StreamInfo:
        """The stream's info if ``user_id`` owns it; else StreamNotFound (no existence oracle)."""
        info = await self.log.info(stream_id)
        if info is None or info.user_id != user_id:
            raise StreamNotFound()
        return info

    def cancel(self, stream_id: str) -> bool:
        """Stop the stream now (it ends ``finishReason: "cancelled"``); False if not running."""
        run = self._runs.get(stream_id)
        if run is None:
            return False
        return self._cancel_run(run)

    async def cancel_owned(self, stream_id: str, user_id: str) -> bool:
        """:meth:`cancel` for ``stream.cancel``: only the owner's streams, on any process."""
        info = await self.owned(stream_id, user_id)
        if info.state != "running":
            return False
        if self.cancel(stream_id):
            return True
        await self.log.request_cancel(stream_id)
        return True

    def _cancel_run(self, run: _Run) -> bool:
        run.timer = None
        if run.cancelled or run.task is None or run.task.done():
            return False
        run.cancelled = True
        run.task.cancel()
        return True

    async def close(self, *, timeout: float = 5.0) -> None:
        """Cancel every stream this process produces and wait for their ends to be logged."""
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        for run in list(self._runs.values()):
            self._cancel_run(run)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.error("stream task did not stop within %.1fs: %r", timeout, task)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()
