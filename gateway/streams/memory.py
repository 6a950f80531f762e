"""The stream log in process memory: bounded per stream, expiring after the end.

Each stream keeps its pieces in a list starting at position ``first``. When
it holds more than ``max_pieces`` pieces or ``max_chars`` characters the
oldest quarter is dropped at once (amortised O(1) per append); a reader that
needs a dropped position gets :class:`~gateway.errors.StreamGap`. A reader
waits on a future of its own, made only while it waits, so a burst of
appends in one loop tick wakes each reader once.
Finished logs are dropped ``done_ttl`` after their end, or earlier (oldest
first) while there are more than ``max_streams`` logs or more than
``max_total_chars`` characters in all. Until then a finished log is kept
compact: its texts joined into one string with their boundaries in an array,
so the minutes of answers a busy process keeps for resumes are a few objects
each (not one per piece) for memory and for the garbage collector to walk.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable

from gateway.errors import StreamGap, StreamNotFound
from gateway.streams.protocol import LIST_LIMIT, Piece, StreamEnd, StreamInfo

__all__ = ["MemoryStreamLog"]


class _Log:
    __slots__ = ("bounds", "chars", "end", "first", "info", "joined", "kinds", "texts", "waiters")

    def __init__(self, info: StreamInfo) -> None:
        self.info = info
        self.texts: list[str] = []
        """The pieces kept, while the stream runs (empty once compacted)."""
        self.joined = ""
        """Once finished: the kept texts, joined (``i``: ``joined[bounds[i]:bounds[i + 1]]``)."""
        self.bounds: array[int] | None = None
        self.kinds: list[str] | None = None
        """Only made once a piece of another kind than text arrives."""
        self.first = 0
        self.chars = 0
        self.end: StreamEnd | None = None
        self.waiters: list[asyncio.Future[None]] = []
        """One future per reader waiting for more (a cancelled reader cancels only its own)."""

    def count(self) -> int:
        """Pieces kept."""
        return len(self.texts) if self.bounds is None else len(self.bounds) - 1

    def texts_from(self, index: int) -> list[str]:
        """The kept texts from the ``index``-th kept one on."""
        if self.bounds is None:
            return self.texts[index:]
        joined, bounds = self.joined, self.bounds
        return [joined[bounds[i] : bounds[i + 1]] for i in range(index, len(bounds) - 1)]

    def compact(self) -> None:
        offsets = itertools.accumulate(map(len, self.texts), initial=0)
        self.bounds = array("I" if self.chars < 1 << 32 else "Q", offsets)
        self.joined = "".join(self.texts)
        self.texts = []

    def wake(self) -> None:
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class MemoryStreamLog:
    """:class:`~gateway.streams.protocol.StreamLog` for one process."""

    shared = False

    def __init__(
        self,
        *,
        # Limits
        max_pieces: int = 10_000,
        max_chars: int = 16 * 1024 * 1024,
        max_streams: int = 100_000,
        max_total_chars: int = 256 * 1024 * 1024,
        # Timeouts (seconds)
        done_ttl: float = 300.0,
        compact: bool = True,
    ) -> None:
        self.max_pieces = max_pieces
        self.max_chars = max_chars
        self.max_streams = max_streams
        self.max_total_chars = max_total_chars
        self._chars = 0
        """Characters held by every log together."""
        self.done_ttl = done_ttl
        self.compact = compact
        """Compact finished logs (False where they are dropped soon anyway: the Redis
        writer's own copies)."""
        self._logs: dict[str, _Log] = {}
        self._by_user: dict[str, dict[str, None]] = {}
        """user id -> that user's stream ids (an ordered set), so list() reads only theirs."""
        self._done: deque[tuple[float, str]] = deque()
        """(expiry, stream id) in finishing order, for expiry without a scan."""

    def _expire(self) -> None:
        now = time.monotonic()
        done = self._done
        while done and (
            done[0][0] <= now
            or len(self._logs) > self.max_streams
            or self._chars > self.max_total_chars
        ):
            self._drop(done.popleft()[1])

    def _drop(self, stream_id: str) -> None:
        log = self._logs.pop(stream_id, None)
        if log is not None:
            self._chars -= log.chars
            mine = self._by_user.get(log.info.user_id, {})
            mine.pop(stream_id, None)
            if not mine:
                self._by_user.pop(log.info.user_id, None)

    def _get(self, stream_id: str) -> _Log:
        self._expire()
        log = self._logs.get(stream_id)
        if log is None:
            raise StreamNotFound()
        return log

    # Writer

    async def create(self, info: StreamInfo) -> None:
        self._expire()
        self._logs[info.stream_id] = _Log(info)
        self._by_user.setdefault(info.user_id, {})[info.stream_id] = None

    def append(self, stream_id: str, text: str, kind: str = "text") -> int:
        log = self._logs[stream_id]
        info = log.info
        pos = info.pieces
        info.pieces = pos + 1
        texts = log.texts
        texts.append(text)
        if kind != "text" or log.kinds is not None:
            if log.kinds is None:
                log.kinds = ["text"] * (len(texts) - 1)
            log.kinds.append(kind)
        size = len(text)
        log.chars += size
        self._chars += size
        if log.chars > self.max_chars or len(texts) > self.max_pieces:
            self._chars -= log.chars
            self._trim(log)
            self._chars += log.chars
        if log.waiters:
            log.wake()
        return pos

    def _trim(self, log: _Log) -> None:
        keep_pieces = self.max_pieces * 3 // 4
        keep_chars = self.max_chars * 3 // 4
        drop = max(0, len(log.texts) - keep_pieces)
        chars = log.chars - sum(len(t) for t in log.texts[:drop])
        while drop < len(log.texts) - 1 and chars > keep_chars:
            chars -= len(log.texts[drop])
            drop += 1
        del log.texts[:drop]
        if log.kinds is not None:
            del log.kinds[:drop]
        log.first += drop
        log.chars = chars

    async def finish(self, stream_id: str, end: StreamEnd) -> None:
        log = self._logs.get(stream_id)
        if log is None or log.end is not None:
            return
        log.end = end
        if self.compact:
            log.compact()
        log.info.state = "done"
        log.info.finished_at = time.time()
        log.info.finish_reason = end.finish_reason
        self._done.append((time.monotonic() + self.done_ttl, stream_id))
        log.wake()

    def since(self, stream_id: str, pos: int) -> tuple[int, int, list[str], list[str] | None]:
        """``(first kept, start, texts, kinds)``: the pieces from position ``pos`` on, or from
        the oldest still kept (``start``) if the log was trimmed past ``pos``; ``kinds`` is
        None while every piece is text. Nothing once the log is gone."""
        log = self._logs.get(stream_id)
        if log is None:
            return 0, pos, [], None
        start = max(pos, log.first)
        skip = start - log.first
        kinds = log.kinds[skip:] if log.kinds is not None else None
        return log.first, start, log.texts_from(skip), kinds

    def forget(self, stream_id: str) -> None:
        """Drop a finished stream's log now (another copy of it is kept elsewhere)."""
        log = self._logs.get(stream_id)
        if log is not None and log.end is not None:
            self._drop(stream_id)

    # Reader

    async def info(self, stream_id: str) -> StreamInfo | None:
        self._expire()
        log = self._logs.get(stream_id)
        return None if log is None else log.info

    async def read(self, stream_id: str, after: int) -> AsyncIterator[Piece | StreamEnd]:
        log = self._get(stream_id)
        pos = after + 1
        while True:
            if pos < log.first:
                raise StreamGap(
                    data={"streamId": stream_id, "after": pos - 1, "firstSeq": log.first}
                )
            head = log.first + log.count()
            if pos < head:
                start = pos - log.first
                texts = log.texts_from(start)
                kinds = log.kinds[start:] if log.kinds is not None else None
                for i, text in enumerate(texts):
                    yield Piece(pos + i, text, kinds[i] if kinds is not None else "text")
                pos += len(texts)
                continue
            if log.end is not None:
                yield log.end
                return
            waiter = asyncio.get_running_loop().create_future()
            log.waiters.append(waiter)
            await waiter

    async def list(self, user_id: str) -> list[StreamInfo]:
        self._expire()
        rows = [self._logs[sid].info for sid in self._by_user.get(user_id, ())]
        return sorted(rows, key=lambda info: info.created_at, reverse=True)[:LIST_LIMIT]

    async def request_cancel(self, stream_id: str) -> None:
        """Nothing to do: on one process the hub cancels its own producer directly."""

    def watch_cancels(self, on_cancel: Callable[[str], object]) -> None:
        """Nothing to watch: no other process shares this log."""

    async def followed_elsewhere(self, stream_id: str) -> bool:
        return False

    async def aclose(self) -> None:
        return None
