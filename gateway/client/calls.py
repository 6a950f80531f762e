"""What a call is on the client side: its params, its frame, and its record while in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "NotificationHandler", "Params"]

Params = dict[str, Any] | list[Any] | None
"""JSON-RPC params: by name, by position, or none."""
NotificationHandler = Callable[[str, Any], object]
"""``on_notification(method, params)``; may return an awaitable, which runs as a task."""


@dataclass(frozen=True, slots=True)
class Call:
    """One item of :meth:`Client.batch`; ``notify`` sends it without an id (its result is None)."""

    method: str
    params: Params = None
    notify: bool = False


@dataclass(eq=False, slots=True)
class _Pending:
    """A request waiting for its response; streams also queue their deltas (None ends them).

    A stream remembers its ``stream_id`` and the last position it received,
    so after a reconnect it continues with ``stream.resume`` under a new ``id``.
    """

    future: asyncio.Future[Any]
    deltas: asyncio.Queue[str | None] | None = None
    last_seq: int = -1
    batch: bool = False
    id: int = 0
    """The request id it is waiting under now (a resume gets a new one)."""
    stream_id: str | None = None
    resumes: int = 0
    """How many times it was resumed after a reconnect."""
    cancelled: bool = False
    """rpc.cancel was sent (or meant to be): do not resume it."""
    reasoning: list[str] = field(default_factory=list)
    """``reasoning`` deltas (chat.chatWithReasoning), kept apart from the text."""

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
