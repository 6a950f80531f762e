"""One Redis pub/sub connection per process: live pieces for followers, cancels for producers.

Followers of a stream produced on another process subscribe to its channel
through :class:`LiveFeed` and get a :class:`Tail`: a bounded queue of the raw
messages published on it. The feed's single reader task takes every message
off the connection and hands it to the tails of its channel, and the messages
on this process's control channel (cancel requests) to ``on_control``.

redis-py documents that messages published while a pub/sub connection is
down are lost. So whenever the connection fails (a Redis restart, ``CLIENT
KILL``, a network fault) the feed builds a new one, subscribes again, and
marks every tail ``stale``: each follower then re-reads the log from the last
position it sent (see :mod:`gateway.streams.redis`). A tail that falls more
than ``TAIL_LIMIT`` messages behind is emptied and marked stale the same way,
so a slow follower costs bounded memory and still misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway import metrics

__all__ = ["LiveFeed", "Tail", "stop_task"]

log = logging.getLogger(__name__)

TAIL_LIMIT = 256
"""Messages a tail holds before it gives them up for a re-read of the log."""
RECONNECT_EVERY = 0.5
"""Seconds between attempts to get the pub/sub connection back."""
SUBSCRIBE_WAIT = 2.0
"""Seconds :meth:`LiveFeed.subscribe` waits for Redis to confirm (then the follower
re-reads the log when it is confirmed, or on its next check)."""


class Tail:
    """The live messages of one channel for one follower."""

    __slots__ = ("_waiter", "channel", "messages", "stale")

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.messages: deque[bytes] = deque()
        self.stale = False
        """Messages may have been missed: re-read the log before trusting the next one."""
        self._waiter: asyncio.Future[None] | None = None

    def push(self, data: bytes) -> None:
        if len(self.messages) >= TAIL_LIMIT:
            self.messages.clear()
            self.stale = True
        else:
            self.messages.append(data)
        self._wake()

    def mark_stale(self) -> None:
        self.messages.clear()
        self.stale = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return when a message or a stale mark is there, or after ``timeout`` seconds."""
        if self.messages or self.stale:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._waiter


class LiveFeed:
    """The process's subscriptions: stream channels (refcounted) plus its control channel."""

    def __init__(
        self, url: str, control: bytes, on_control: Callable[[bytes], object], *, timeout: float
    ) -> None:
        # A client of its own, not the pool's: a failure must reach us (no silent
        # reconnect that would hide lost messages), and reads wait without a timeout.
        self._client = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._control = control
        self._on_control = on_control
        self._tails: dict[bytes, set[Tail]] = {}
        self._pubsub: Any = None
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            await stop_task(self._task, 5.0)
            self._task = None
        await self._client.aclose(close_connection_pool=True)

    async def subscribe(self, channel: bytes) -> Tail:
        """A tail of ``channel``, subscribed (confirmed by Redis, or marked stale if not yet)."""
        tail = Tail(channel)
        tails = self._tails.get(channel)
        if tails:
            tails.add(tail)
            return tail
        self._tails[channel] = {tail}
        pubsub = self._pubsub
        if pubsub is None or not self._connected.is_set():
            tail.stale = True  # subscribed with every channel once the connection is back
            return tail
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmed[channel] = confirmed
        try:
            await pubsub.subscribe(channel)
            async with asyncio.timeout(SUBSCRIBE_WAIT):
                await confirmed
        except Exception:
            tail.stale = True
        finally:
            self._confirmed.pop(channel, None)
        return tail

    async def unsubscribe(self, tail: Tail) -> None:
        tails = self._tails.get(tail.channel)
        if tails is None:
            return
        tails.discard(tail)
        if tails:
            return
        del self._tails[tail.channel]
        pubsub = self._pubsub
        if pubsub is not None and self._connected.is_set():
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(tail.channel)

    async def _run(self) -> None:
        while not self._closing:
            pubsub = self._client.pubsub()
            self._pubsub = pubsub
            try:
                await pubsub.subscribe(self._control, *self._tails)
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._connected.is_set():
                    reason = type(exc).__name__
                    log.warning("Redis pub/sub connection lost (%s); resubscribing", reason)
                    metrics.redis_error("streams")
            finally:
                self._connected.clear()
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            for tails in self._tails.values():
                for tail in tails:
                    tail.mark_stale()
            await asyncio.sleep(RECONNECT_EVERY)

    async def _read(self, pubsub: Any) -> None:
        control = self._control
        while not self._closing:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            channel = message["channel"]
            if kind == "message":
                if channel == control:
                    self._on_control(message["data"])
                    continue
                for tail in self._tails.get(channel, ()):
                    tail.push(message["data"])
            elif kind == "subscribe":
                if channel == control:
                    # Connected and subscribed again: whatever was published meanwhile
                    # is read from the logs by the stale tails.
                    self._connected.set()
                    for tails in self._tails.values():
                        for tail in tails:
                            tail.mark_stale()
                confirmed = self._confirmed.get(channel)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)


async def stop_task(task: asyncio.Task[Any], timeout: float) -> None:
    """Cancel ``task`` until it ends (a cancellation swallowed inside redis-py is repeated),
    for at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done() and loop.time() < deadline:
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.done():
        log.error("task did not stop within %.1fs: %r", timeout, task)
