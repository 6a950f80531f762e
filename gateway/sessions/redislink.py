"""One Redis client for a process's shared state, and how a Redis outage looks to callers.

Two ways to Redis: script calls (:meth:`RedisLink.eval`, the request path,
and :meth:`RedisLink.send_many`, batches such as the stream log's appends)
go out on one multiplexed RESP3 connection, which also carries the
client-side caching invalidations (:mod:`gateway.sessions.redismux`);
pipelines and plain commands (cleanup, stats, lease renewals) use a pool
through :meth:`RedisLink.run`. While Redis answers, that is the call. When
it stops answering (refused, reset, or silent past ``timeout``), the call
raises :class:`StoreUnavailable` (-32020, ``data.retryAfter``), one ERROR
line is logged at the transition, a WARNING reminder at most every
``REMINDER_EVERY`` seconds while it lasts, and later calls fail at once
instead of each waiting out a timeout, while a probe pings Redis every
``PROBE_EVERY`` seconds. The first answered ping ends the outage
(one WARNING line), reopens the multiplexed connection (with tracking on
again) and runs the ``on_recover`` callbacks: leases re-assert their counts,
so nothing needs a restart. Every cache kept through :meth:`RedisLink.track`
is flushed at the first sign of an outage and when the connection reopens.

Lua scripts are loaded once (``SCRIPT LOAD``) and called by SHA; after a Redis
restart emptied its script cache they are loaded again on the first
``NOSCRIPT``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import metrics
from gateway.errors import StoreUnavailable
from gateway.sessions.redismux import Invalidated, OnReply, RedisMux, resp

__all__ = ["RedisLink", "Script", "redacted_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

REMINDER_EVERY = 30.0
"""Seconds between the log reminders while Redis stays unreachable."""
PROBE_EVERY = 0.5
"""Seconds between pings while Redis is unreachable."""
RETRY_AFTER = 1
"""``data.retryAfter`` (seconds) of -32020."""
MAX_CONNECTIONS = 64
"""Redis connections per process; more concurrent calls wait for one."""

_FAULTS = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)


def redacted_url(url: str) -> str:
    """``url`` without its password, for log lines and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class Script:
    """A Lua script called by SHA (see :meth:`RedisLink.script`)."""

    def __init__(self, link: RedisLink, source: str) -> None:
        self.link = link
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        """What Redis names it (``SCRIPT LOAD`` answers the same): valid before it is loaded."""

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Add a call of this script to ``pipe`` (a redis-py pipeline)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    def command(self, keys: Sequence[str], args: Sequence[bytes | str | int]) -> bytes:
        """A call of this script, packed, for :meth:`RedisLink.send_many`."""
        return resp("EVALSHA", self.sha, len(keys), *keys, *args)

    async def __call__(
        self, keys: Sequence[str], args: Sequence[Any], on_reply: OnReply | None = None
    ) -> Any:
        return await self.link.eval(self, keys, args, on_reply)


class RedisLink:
    """The client, the key prefix, the scripts and the health state of one Redis."""

    def __init__(self, url: str, *, prefix: str = "gw:", timeout: float = 1.0) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        # A burst of calls waits for a pooled connection (up to ``timeout``) instead
        # of failing: running out of connections is load, not an outage.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One retry on a fresh connection (a pooled one may have died with a Redis
            # restart); a timeout is not retried, so a call fails within ~timeout.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.healthy = True
        self.on_recover: list[Callable[[], Awaitable[None]]] = []
        self._scripts: list[Script] = []
        self._down_since = 0.0
        self._reminded = 0.0
        self._probe: asyncio.Task[None] | None = None
        self._listeners: list[Invalidated] = []
        self._reloading: asyncio.Task[None] | None = None
        self.mux = RedisMux(
            url, timeout=timeout, on_lost=self._lost, on_invalidate=self._invalidated
        )
        """The connection every script call goes out on (pipelines use ``client``)."""

    def key(self, tag: str, name: str) -> str:
        """``<prefix>{<tag>}:<name>``: every key of one tag lands in one Cluster slot."""
        return f"{self.prefix}{{{tag}}}:{name}"

    def user_key(self, user_id: str, name: str) -> str:
        return self.key(f"u:{user_id}", name)

    def script(self, source: str) -> Script:
        """Register a Lua script; it is loaded by :meth:`connect`."""
        script = Script(self, source)
        self._scripts.append(script)
        return script

    async def connect(self) -> None:
        """Ping Redis and load the scripts; raise ``StoreUnavailable`` with a one-line reason."""
        try:
            async with asyncio.timeout(self.timeout * 3):
                await self.client.ping()
                await self._load_scripts()
                await self.mux.connect()
        except Exception as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {redacted_url(self.url)}: {_reason(exc)}"
            ) from None
        metrics.redis_up(True)

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.mux.close()
        await self.client.aclose(close_connection_pool=True)

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis command (or pipeline); an outage becomes :class:`StoreUnavailable`."""
        if not self.healthy:
            self._remind()
            raise StoreUnavailable(data={"retryAfter": RETRY_AFTER})
        # No timer of our own: the pool wait, connect, every read and write are each
        # bounded by ``timeout`` (one retry after a dropped connection).
        try:
            try:
                return await call()
            except NoScriptError:
                await self._load_scripts()
                return await call()
        except _FAULTS as exc:
            self._lost(exc)
            raise StoreUnavailable(data={"retryAfter": RETRY_AFTER}) from None

    async def eval(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        on_reply: OnReply | None = None,
    ) -> Any:
        """Run ``script`` on the multiplexed connection (pipelined with other tasks' calls).

        ``on_reply`` gets the reply in order with the connection's invalidations
        (see :mod:`gateway.sessions.redismux`); it is not called for an error.
        """
        if not self.healthy:
            self._remind()
            raise StoreUnavailable(data={"retryAfter": RETRY_AFTER})
        call = ["EVALSHA", script.sha, len(keys), *keys, *args]
        try:
            return await self.mux.send(call, on_reply)
        except NoScriptError:
            await self._reload()  # the SHA is the source's: the same call is valid again
            return await self.mux.send(call, on_reply)

    async def send_many(self, commands: Sequence[Sequence[Any] | bytes]) -> list[Any]:
        """Commands (argument lists, or packed RESP bytes) written together on the multiplexed
        connection; their replies, in order.

        The cheap way to send many calls at once (no pipeline object, no pooled
        connection). A command answered ``NOSCRIPT`` (Redis restarted) is sent
        once more after the scripts are loaded again (a script's SHA is its
        source's, so the command stays valid); the first other error is raised.
        """
        if not self.healthy:
            self._remind()
            raise StoreUnavailable(data={"retryAfter": RETRY_AFTER})
        replies = await self.mux.send_all(commands)
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if again:
            await self._reload()
            answers = await self.mux.send_all([commands[i] for i in again])
            for i, reply in zip(again, answers, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def barrier(self) -> None:
        """See :meth:`RedisMux.barrier`: others' invalidations for earlier writes are out."""
        if self.mux.tracking:
            await self.mux.barrier()

    async def fresh(self) -> bool:
        """Whether a cache kept coherent by tracked invalidations may be read now."""
        return self.healthy and await self.mux.fresh()

    def track(self, prefix: str, on_invalidate: Invalidated) -> None:
        """Have keys under ``prefix`` invalidated by Redis (call before :meth:`connect`)."""
        self.mux.prefixes.append(prefix)
        self._listeners.append(on_invalidate)

    def _invalidated(self, keys: list[bytes] | None) -> None:
        for listener in self._listeners:
            listener(keys)

    async def _reload(self) -> None:
        """Load the scripts again (once for any number of concurrent ``NOSCRIPT``)."""
        if self._reloading is None:
            self._reloading = asyncio.get_running_loop().create_task(self._load_scripts())
            self._reloading.add_done_callback(lambda _: setattr(self, "_reloading", None))
        try:
            await asyncio.shield(self._reloading)
        except _FAULTS as exc:
            self._lost(exc)
            raise StoreUnavailable(data={"retryAfter": RETRY_AFTER}) from None

    async def _load_scripts(self) -> None:
        for script in self._scripts:
            script.sha = await self.client.script_load(script.source)

    def _lost(self, exc: BaseException) -> None:
        self._invalidated(None)
        metrics.redis_error()
        if not self.healthy:
            return
        self.healthy = False
        metrics.redis_up(False)
        self._down_since = self._reminded = time.monotonic()
        log.error(
            "Redis at %s unreachable (%s); calls needing shared state get -32020 until it returns",
            redacted_url(self.url),
            _reason(exc),
        )
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_redis())

    def _remind(self) -> None:
        now = time.monotonic()
        if now - self._reminded >= REMINDER_EVERY:
            self._reminded = now
            log.warning("Redis still unreachable after %.0f s", now - self._down_since)

    async def _wait_for_redis(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY)
            try:
                async with asyncio.timeout(self.timeout * 2 + 0.5):
                    await self.client.ping()
                    await self._load_scripts()
                    await self.mux.connect()
            except _FAULTS:
                self._remind()
                continue
            break
        self.healthy = True
        metrics.redis_up(True)
        log.warning("Redis reachable again after %.1f s", time.monotonic() - self._down_since)
        for callback in self.on_recover:
            try:
                await callback()
            except Exception:
                log.exception("recovery callback failed")
        self._probe = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
