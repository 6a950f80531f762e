"""Runs each streamed answer so that it outlives the connection that asked for it.

The call that starts a stream **produces** it: :meth:`StreamHub.produce`
logs every piece and hands it to the caller's connection (``deliver``) in the
same step, so a connected reader costs one log append per piece and no task
switch. When that connection goes away, ``deliver`` raises
:class:`~gateway.jsonrpc.outbound.OutboundClosed` and the call's
task goes on producing into the log alone, detached (the session does not
cancel it). Other connections **follow** the log (:meth:`StreamHub.follow`,
``stream.resume``). A stream with neither its connection nor a follower for
``resume_grace`` seconds is cancelled (0: at once, the old
cancel-on-disconnect). A follower on this process that falls more than
``max_lag`` pieces behind makes the producer wait (as a full outbound queue
does for the producer's own connection), so a connected reader never loses
pieces to the log's length cap; with nobody reading, the producer runs free
and the cap bounds memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from gateway import metrics
from gateway.context import current_user
from gateway.errors import GatewayError, InternalError, StreamGap, StreamNotFound
from gateway.jsonrpc.outbound import OutboundClosed
from gateway.jsonrpc.registry import Final, Reasoning
from gateway.streams.protocol import Piece, StreamEnd, StreamInfo, StreamLog, new_stream_id

__all__ = ["Deliver", "StreamHub"]

log = logging.getLogger(__name__)

Deliver = Callable[[str, int], Awaitable[None]]
"""``deliver(text, pos)``: queue a piece for the producing connection (``put_delta`` bound to
its stream); raises OutboundClosed once the connection is gone."""

TIME_SLICE = 0.005
"""Seconds a producer may run without yielding to the loop."""


class _Run:
    """A stream this process is producing."""

    __slots__ = (
        "attached",
        "cancelled",
        "head",
        "interrupted",
        "readers",
        "room",
        "stream_id",
        "task",
        "timer",
        "timer_task",
        "user_id",
    )

    def __init__(self, stream_id: str, user_id: str, task: asyncio.Task[Any] | None) -> None:
        self.stream_id = stream_id
        self.user_id = user_id
        self.task = task
        """The task producing it: the call that started it."""
        self.attached = True
        """The producing call's connection still takes the pieces."""
        self.head = -1
        """Position of the last piece logged."""
        self.readers: dict[object, int] = {}
        """Followers on this process -> the last position each has taken."""
        self.room: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_task: asyncio.Task[None] | None = None
        """The look at other processes' followers when the grace ran out."""
        self.cancelled = False
        """The hub cancelled it (rpc.cancel, stream.cancel, grace, shutdown)."""
        self.interrupted = False
        """Cancelled by the shutdown: it ends ``finishReason: "interrupted"``."""

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
        self._requests: set[asyncio.Task[None]] = set()
        """Cancel requests on their way to another process."""
        stream_log.watch_cancels(self._cancel_here)

    @property
    def shared(self) -> bool:
        """Other processes read this log (they can resume what this one produces)."""
        return self.log.shared

    @property
    def running(self) -> int:
        """Streams this process is producing now."""
        return len(self._runs)

    # Producing

    async def open(self, method: str) -> str:
        """Start the log of a new stream, produced by the current task; return its id."""
        user = current_user()
        stream_id = new_stream_id()
        await self.log.create(StreamInfo(stream_id, user.id, method, time.time(), owner=self.node))
        self._runs[stream_id] = _Run(stream_id, user.id, asyncio.current_task())
        return stream_id

    async def produce(
        self, stream_id: str, source: AsyncGenerator[Any, None], deliver: Deliver
    ) -> StreamEnd:
        """Log ``source``'s pieces and ``deliver`` each; go on alone once the connection is gone.

        ``source`` yields text (``str``, or objects with ``text`` and ``kind``)
        and may end with a :class:`Final`. Returns how the stream ended, as
        logged (its result carries ``streamId``); never raises for the stream's
        own failures, which end it with an error instead.
        """
        run = self._runs[stream_id]
        loop = asyncio.get_running_loop()
        append = self.log.append
        end: StreamEnd | None = None
        slice_start = loop.time()
        readers = run.readers
        try:
            try:
                async for item in source:
                    if type(item) is str:  # the common case first: plain answer text
                        text, pos = item, append(stream_id, item)
                    elif isinstance(item, Final):
                        end = StreamEnd(item.result)
                        break
                    elif isinstance(item, str):
                        # Delivered as yielded: a Reasoning piece keeps its type (and kind).
                        kind = "reasoning" if isinstance(item, Reasoning) else "text"
                        text, pos = item, append(stream_id, item, kind)
                    else:
                        text, pos = item.text, append(stream_id, item.text, item.kind)
                    run.head = pos
                    if run.attached:
                        try:
                            await deliver(text, pos)
                        except OutboundClosed:
                            self._detach(run)
                    if readers and run.lag() > self.max_lag:
                        await self._wait_for_readers(run)
                    if loop.time() - slice_start > TIME_SLICE:
                        await asyncio.sleep(0)
                        slice_start = loop.time()
            except asyncio.CancelledError:
                if not run.cancelled:
                    end = StreamEnd({"finishReason": "cancelled"})
                    raise  # not ours (the loop is closing): log the end, then go
                _uncancel()
                end = await _ending(source)
            except GatewayError as exc:
                end = StreamEnd(error=exc.to_error())
            except Exception:
                log.exception("stream %s failed", stream_id)
                end = StreamEnd(error=InternalError().to_error())
            if run.cancelled:
                # A cancel the source swallowed (it answered with its Final) still counts.
                _uncancel()
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()
            if end is None:
                end = StreamEnd({"finishReason": "stop"})
            if end.error is None and isinstance(end.result, dict):
                result = {**end.result, "streamId": stream_id}
                if run.interrupted:
                    result["finishReason"] = "interrupted"
                end = StreamEnd(result)
            if run.timer is not None:
                run.timer.cancel()
            if not run.attached:
                metrics.detached_stream_ended()
            self._runs.pop(stream_id, None)
            await self.log.finish(stream_id, end)
        return end

    async def _wait_for_readers(self, run: _Run) -> None:
        while run.readers and run.lag() > self.max_lag:
            run.room = asyncio.get_running_loop().create_future()
            await run.room

    def _detach(self, run: _Run) -> None:
        """The producing connection is gone: from now on the stream lives on followers."""
        run.attached = False
        metrics.stream_detached()
        if not run.readers:
            self._arm(run)

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
            async for item in _counting_gaps(self.log.read(stream_id, after)):
                yield item
                if run is not None and isinstance(item, Piece):
                    run.readers[token] = item.pos
                    if run.room is not None and run.lag() <= self.max_lag:
                        run.wake()
        finally:
            if run is not None:
                run.readers.pop(token, None)
                run.wake()
                if not run.readers and not run.attached and stream_id in self._runs:
                    self._arm(run)

    def _arm(self, run: _Run) -> None:
        """Nobody follows now: cancel the stream unless someone comes within ``resume_grace``."""
        if run.timer is not None:
            run.timer.cancel()
        run.timer = None
        if self.resume_grace <= 0:
            self._cancel_run(run)
        else:
            run.timer = asyncio.get_running_loop().call_later(
                self.resume_grace, self._grace_over, run
            )

    def _grace_over(self, run: _Run) -> None:
        run.timer = None
        if run.task is not None and not run.task.done():
            task = asyncio.get_running_loop().create_task(self._cancel_unless_followed(run))
            run.timer_task = task

    async def _cancel_unless_followed(self, run: _Run) -> None:
        try:
            followed = await self.log.followed_elsewhere(run.stream_id)
        except Exception:
            log.warning("cannot tell if stream %s is followed elsewhere", run.stream_id)
            followed = False
        if run.readers or run.attached or run.stream_id not in self._runs:
            return
        if followed:
            self._arm(run)  # a reader on another process: look again after another grace
        else:
            self._cancel_run(run)

    # Cancelling

    async def owned(self, stream_id: str, user_id: str) -> StreamInfo:
        """The stream's info if ``user_id`` owns it; else StreamNotFound (no existence oracle)."""
        info = await self.log.info(stream_id)
        if info is None or info.user_id != user_id:
            raise StreamNotFound()
        return info

    def cancel(self, stream_id: str) -> bool:
        """Stop the stream now (it ends ``finishReason: "cancelled"``): here if this process
        produces it (False if it is not running), else by asking its owner (True)."""
        run = self._runs.get(stream_id)
        if run is not None:
            return self._cancel_run(run)
        task = asyncio.get_running_loop().create_task(self._request_cancel(stream_id))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return True

    async def _request_cancel(self, stream_id: str) -> None:
        try:
            await self.log.request_cancel(stream_id)
        except Exception:
            log.warning("could not ask the owner of stream %s to cancel it", stream_id)

    async def cancel_owned(self, stream_id: str, user_id: str) -> bool:
        """:meth:`cancel` for ``stream.cancel``: only the owner's streams, on any process."""
        info = await self.owned(stream_id, user_id)
        if info.state != "running":
            return False
        run = self._runs.get(stream_id)
        if run is not None:
            return self._cancel_run(run)
        await self.log.request_cancel(stream_id)
        return True

    def _cancel_here(self, stream_id: str) -> None:
        """Another process asks to stop one of ours (see StreamLog.watch_cancels)."""
        run = self._runs.get(stream_id)
        if run is not None:
            self._cancel_run(run)

    def _cancel_run(self, run: _Run) -> bool:
        run.timer = None
        if run.cancelled or run.task is None or run.task.done():
            return False
        run.cancelled = True
        run.task.cancel()
        return True

    async def wait_idle(self, timeout: float) -> None:
        """Wait until this process produces no stream (the drain), at most ``timeout`` s."""
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        if tasks and timeout > 0:
            await asyncio.wait(tasks, timeout=timeout)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Stop every stream this process produces (they end ``interrupted``), wait for
        their ends to be logged, then close the log."""
        runs = list(self._runs.values())
        tasks = [run.task for run in runs if run.task is not None]
        for run in runs:
            run.interrupted = True
            self._cancel_run(run)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.error("stream task did not stop within %.1fs: %r", timeout, task)
        if self._requests:
            await asyncio.wait(list(self._requests), timeout=timeout)
        await self.log.aclose()


async def _counting_gaps(
    reader: AsyncIterator[Piece | StreamEnd],
) -> AsyncGenerator[Piece | StreamEnd, None]:
    try:
        async for item in reader:
            yield item
    except StreamGap:
        metrics.stream_resume("gap")
        raise


async def _ending(source: AsyncGenerator[Any, None]) -> StreamEnd:
    """How a cancelled source ends: it may be parked at a yield, so let it say (its Final)."""
    if getattr(source, "ag_frame", None) is not None:
        try:
            item = await source.athrow(asyncio.CancelledError())
            if isinstance(item, Final):
                return StreamEnd(item.result)
        except (StopAsyncIteration, asyncio.CancelledError):
            pass
    return StreamEnd({"finishReason": "cancelled"})


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()
