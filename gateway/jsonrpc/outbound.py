"""A connection's bounded outbound queue, merging the deltas of a lagging stream.

Frames wait here until the transport writes them. A stream's delta is added
to that stream's frame still waiting in the queue, if there is one, instead
of becoming a frame of its own: a fast reader gets one frame per delta, a
lagging reader gets fewer, larger frames. A frame's ``seq`` is the position
of the last piece it holds (a piece's index in its answer, fixed when it was
produced), so it increases and skips where pieces merged, and means the
same on every connection. While the writer task is idle, frames go straight to the
transport (``write_now``) for as long as it takes them without waiting: the
first frame of a loop tick at once, the rest of that tick (an upstream
burst) merged and written at its end. No task switch for a reader that keeps
up. A frame carries at most ``max_merge`` characters of merged text
(a single larger delta still goes whole), so merging never makes a frame a
client's websocket library would refuse. Producers wait while the queue
holds more than ``max_bytes``, which bounds memory whatever the reader does.

A delta is answer text (``"text"``) or, when it is a
:class:`~gateway.jsonrpc.registry.Reasoning`, reasoning (``"reasoning"``).
Only consecutive deltas of one kind merge: a reasoning delta after text
starts a frame of its own, and so does text after reasoning, so the two are
never mixed and keep their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from gateway.jsonrpc.registry import Reasoning

__all__ = ["DeltaStream", "Outbound", "OutboundClosed"]


FRAME_OVERHEAD = 4096
"""Memory a queued frame costs beyond its length: orjson's output holds a ~4 KiB buffer."""


class OutboundClosed(Exception):
    """The connection is gone; nothing more can be queued."""


class DeltaStream:
    """The per-request state of one stream: its id (encoded), next position, first-frame extras.

    ``head`` holds extra members for the stream's first frame only (e.g.
    ``b',"streamId":"st_..."'``).
    """

    __slots__ = ("head", "id_json", "pending", "seq")

    def __init__(self, id_json: bytes, head: bytes = b"") -> None:
        self.id_json = id_json
        self.seq = 0
        """The position of the next piece that comes without one."""
        self.head = head
        self.pending: _Delta | None = None


_TEXT = b',"text":'
_REASONING = b',"reasoning":'


class _Delta:
    __slots__ = ("key", "parts", "pos", "size", "stream")

    def __init__(self, stream: DeltaStream, text: str, key: bytes, pos: int) -> None:
        self.stream = stream
        self.parts = [text]
        self.pos = pos
        self.size = 64 + len(text)
        self.key = key

    def encode(self) -> bytes:
        stream = self.stream
        # After a max_merge cut a newer frame of this stream may be the pending one.
        if stream.pending is self:
            stream.pending = None
        head, stream.head = stream.head, b""
        text = self.parts[0] if len(self.parts) == 1 else "".join(self.parts)
        return b"".join(
            (
                b'{"jsonrpc":"2.0","method":"stream.delta","params":{"id":',
                stream.id_json,
                head,
                b',"seq":',
                str(self.pos).encode(),
                self.key,
                orjson.dumps(text),
                b"}}",
            )
        )


class Outbound:
    """FIFO of frames (bytes) and mergeable deltas, bounded by the bytes it holds."""

    merged_total = 0
    """Deltas merged by every queue of this process (read by the metrics)."""

    def __init__(
        self,
        *,
        max_bytes: int = 1024 * 1024,
        max_merge: int = 64 * 1024,
        write_now: Callable[[bytes], bool] | None = None,
    ) -> None:
        # A list, not a deque: an empty deque holds a 64-slot block (~600 B per idle
        # connection), and the queue stays short (max_bytes counts FRAME_OVERHEAD per frame).
        self._items: list[bytes | _Delta] = []
        self._write_now = write_now
        # Futures made only while someone waits: an idle connection holds no Event and deque.
        self._reader: asyncio.Future[None] | None = None
        """Set while the writer waits in :meth:`get` (so a flush writing the queue keeps order)."""
        self._room: asyncio.Future[None] | None = None
        """Set while producers wait for the queue to drain below ``max_bytes``."""
        self._flush_scheduled = False
        self._bytes = 0
        self._max_bytes = max_bytes
        self._max_merge = max_merge
        self._closed = False
        self.merged = 0
        """Deltas folded into a frame already queued (a measure of reader lag)."""

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    async def _wait_for_room(self) -> None:
        while self._bytes > self._max_bytes and not self._closed:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            # wait() rather than await: a cancelled producer must not cancel the others' future.
            await asyncio.wait((self._room,))
        if self._closed:
            raise OutboundClosed

    def _wake(self) -> None:
        """Something was queued: write it now, or at the end of this tick, or wake the writer."""
        if self._reader is not None and self._write_now is not None:
            if not self._flush_scheduled:
                # The first frame of a tick goes out at once (first-token latency); what
                # follows in the same tick merges in the queue and goes out at its end.
                self._write_queue()
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._end_tick)
        else:
            self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _end_tick(self) -> None:
        self._flush_scheduled = False
        self._write_queue()

    def _write_queue(self) -> None:
        """Write the queue straight to the transport while it takes frames without waiting."""
        if self._closed or self._reader is None:
            return  # the writer is running: it drains the queue itself
        assert self._write_now is not None
        while self._items:
            frame = self._pop()
            if not self._write_now(frame):
                # No room now (or the close marker): the writer sends it, in order.
                self._items.insert(0, frame)
                self._bytes += len(frame) + FRAME_OVERHEAD
                self._wake_reader()
                return

    def _pop(self) -> bytes:
        item = self._items.pop(0)
        if isinstance(item, bytes):
            frame = item
            self._bytes -= len(frame) + FRAME_OVERHEAD
        else:
            frame = item.encode()
            self._bytes -= item.size
        if self._bytes <= self._max_bytes and self._room is not None:
            self._room.set_result(None)
            self._room = None
        return frame

    async def put(self, frame: bytes) -> None:
        await self._wait_for_room()
        self._items.append(frame)
        self._bytes += len(frame) + FRAME_OVERHEAD
        self._wake()

    async def put_delta(self, stream: DeltaStream, text: str, pos: int | None = None) -> None:
        """Queue ``text`` (a :class:`Reasoning` is reasoning) at position ``pos`` (default:
        the one after the last), merged into the stream's waiting frame of the same kind
        if it directly precedes."""
        await self._wait_for_room()
        key = _REASONING if isinstance(text, Reasoning) else _TEXT
        if pos is None:
            pos = stream.seq
        stream.seq = pos + 1
        pending = stream.pending
        if (
            pending is not None
            and pending.key is key
            and pending.size + len(text) <= self._max_merge
        ):
            pending.parts.append(text)
            pending.pos = pos
            pending.size += len(text)
            self._bytes += len(text)
            self.merged += 1
            Outbound.merged_total += 1
        else:
            pending = stream.pending = _Delta(stream, text, key, pos)
            self._items.append(pending)
            self._bytes += pending.size
        self._wake()

    async def get(self) -> bytes:
        """The next frame to write; raises :class:`OutboundClosed` once closed."""
        while not self._items:
            if self._closed:
                raise OutboundClosed
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        return self._pop()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called: nothing more reaches the client."""
        return self._closed

    def close(self) -> None:
        """Wake everyone: producers and the writer get :class:`OutboundClosed`."""
        self._closed = True
        self._items.clear()
        self._bytes = 0
        self._wake_reader()
        if self._room is not None:
            self._room.set_result(None)
            self._room = None
