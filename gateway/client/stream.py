"""The text deltas of one streaming call, as an async iterator."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from gateway.client.calls import Params, _Pending
from gateway.client.errors import ClientError

if TYPE_CHECKING:
    from gateway.client.core import Client

__all__ = ["Stream"]

logger = logging.getLogger("gateway.client")


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
        self.result: Any = None
        self._client = client
        self._parts: list[str] = []
        self._pending: _Pending | None = None
        self._done = False

    @property
    def id(self) -> int | None:
        """The request id the stream is waiting under now (``stream.resume`` gives a new one)."""
        return self._pending.id if self._pending is not None else None

    @property
    def stream_id(self) -> str | None:
        """The server's id for this answer (from its first delta), for ``stream.resume``."""
        return self._pending.stream_id if self._pending is not None else None

    @property
    def resumes(self) -> int:
        """How many times the stream was resumed after a reconnect."""
        return self._pending.resumes if self._pending is not None else 0

    @property
    def reasoning(self) -> str:
        """The model's reasoning received so far (``reasoning`` deltas; not yielded)."""
        return "".join(self._pending.reasoning) if self._pending is not None else ""

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
                    _, self._pending = await self._client._start(self.method, self.params)
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
