"""The per-answer log that makes streams resumable: its vocabulary and its Protocol.

Every streamed answer gets a log, keyed by a random ``stream_id``. The
producer (the process generating the answer) appends each piece as it is
produced; the piece's **position** is its index in the answer (0, 1, 2, ...),
fixed when it is logged, whatever merging a connection does later. Readers
replay the pieces after a position and then follow the live rest; the log
ends with a :class:`StreamEnd` (the call's final result, or its error).

The memory implementation (:mod:`gateway.streams.memory`) keeps logs in the
process. A Redis implementation slots in beside it with the same verbs: one
Redis Stream per answer under a hash tag (``{st:<id>}``), one entry per written
batch with id ``<position+1>-0`` of its first new piece so positions need no
lookup table, the append and the live publish in one Lua script (live order
equals log order), trimmed as the producer's own copy is, a TTL while running
and ``done_ttl`` after the end, appends buffered and written every 20 ms at most
(:meth:`StreamLog.append` is synchronous for that reason; a create or an end is
written at once), and :meth:`StreamLog.request_cancel` setting a cancel flag
plus publishing a control message to the owner (the flag is re-read by the
owner's lease loop, so a lost pub/sub message loses no cancel).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "LIST_LIMIT",
    "Piece",
    "StreamEnd",
    "StreamInfo",
    "StreamLog",
    "current_stream",
    "new_stream_id",
]

LIST_LIMIT = 50
"""Streams :meth:`StreamLog.list` (``stream.list``) gives at most: the newest."""

State = Literal["running", "done"]
"""A stream is running until its end is logged, then done (until it expires)."""


current_stream: ContextVar[str | None] = ContextVar("gateway_current_stream", default=None)
"""The id of the logged stream the running call produces (None when it is not logged): a
streaming method that records its answer (conversation.send) records this id with it."""


def new_stream_id() -> str:
    """A random, unguessable, never reused stream id (128 bits, URL-safe)."""
    return "st_" + secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Piece:
    """One logged piece of an answer: its position, its text, and its kind."""

    pos: int
    text: str
    kind: str = "text"
    """``"text"`` for answer text; other kinds (e.g. ``"reasoning"``) ride along unchanged."""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How a stream ended: the final ``result`` of the call, or its JSON-RPC ``error``."""

    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def finish_reason(self) -> str | None:
        if self.error is not None:
            return "error"
        if isinstance(self.result, dict):
            reason = self.result.get("finishReason")
            return reason if isinstance(reason, str) else None
        return None


@dataclass(slots=True)
class StreamInfo:
    """What a stream's owner and ``stream.list`` know about it (never its text)."""

    stream_id: str
    user_id: str
    method: str
    created_at: float
    """Unix seconds."""
    state: State = "running"
    pieces: int = 0
    """Pieces logged so far: the next position."""
    finished_at: float | None = None
    finish_reason: str | None = None
    owner: str = ""
    """The node producing it (``gateway.node``); informational on one process."""

    def public(self) -> dict[str, Any]:
        """The row ``stream.list`` returns."""
        return {
            "streamId": self.stream_id,
            "method": self.method,
            "state": self.state,
            "createdAt": round(self.created_at, 3),
            "finishedAt": round(self.finished_at, 3) if self.finished_at else None,
            "lastSeq": self.pieces - 1,
            "finishReason": self.finish_reason,
        }


class StreamLog(Protocol):
    """Where the pieces of every answer are recorded, for as long as they can be resumed.

    Writer side (only the producer writes to a stream): :meth:`create`,
    :meth:`append`, :meth:`finish`. Reader side: :meth:`info`, :meth:`read`,
    :meth:`list`. Across processes: :meth:`request_cancel`,
    :meth:`watch_cancels`, :meth:`followed_elsewhere`. Lifecycle: :meth:`aclose`.
    """

    shared: bool
    """Whether other processes read it (resume there, cancel from there)."""

    async def create(self, info: StreamInfo) -> None:
        """Start the log of a new stream (state running, no pieces)."""
        ...

    def append(self, stream_id: str, text: str, kind: str = "text") -> int:
        """Log the next piece and return its position (it may be written at the tick's end)."""
        ...

    async def finish(self, stream_id: str, end: StreamEnd) -> None:
        """Write what is pending, then the end; the log then expires after ``done_ttl``."""
        ...

    async def info(self, stream_id: str) -> StreamInfo | None:
        """The stream's info, or None if it is unknown or expired."""
        ...

    def read(self, stream_id: str, after: int) -> AsyncIterator[Piece | StreamEnd]:
        """Every piece after position ``after`` exactly once, live ones as they come, then the end.

        Raises :class:`~gateway.errors.StreamNotFound` if the stream is unknown
        or expired and :class:`~gateway.errors.StreamGap` if pieces after
        ``after`` were trimmed (also while following, should the reader fall
        that far behind).
        """
        ...

    async def list(self, user_id: str) -> list[StreamInfo]:
        """The user's running and recently finished streams, newest first (at most
        ``LIST_LIMIT``)."""
        ...

    async def request_cancel(self, stream_id: str) -> None:
        """Ask the stream's owner to stop it (on any process)."""
        ...

    def watch_cancels(self, on_cancel: Callable[[str], object]) -> None:
        """Call ``on_cancel(stream_id)`` when another process asks to stop one of ours."""
        ...

    async def followed_elsewhere(self, stream_id: str) -> bool:
        """Whether a reader on another process follows the stream now (it must not be
        cancelled for want of followers)."""
        ...

    async def aclose(self) -> None:
        """Stop background work (flushes, subscriptions); logs already finished stay."""
        ...
