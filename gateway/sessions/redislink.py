"""One Redis client for a process's shared state, and how a Redis outage looks to callers.

Every Redis call of the stores goes through :meth:`RedisLink.run`. While
Redis answers, that is the call. When it stops answering (refused, reset, or
silent past ``timeout``), the call raises :class:`StoreUnavailable` (-32020,
``data.retryAfter``), one ERROR line is logged at the transition, a WARNING
reminder at most every ``REMINDER_EVERY`` seconds while it lasts, and later
calls fail at once instead of each waiting out a timeout, while a probe pings
Redis every ``PROBE_EVERY`` seconds. The first answered ping ends the outage
(one WARNING line) and runs the ``on_recover`` callbacks: leases re-assert
their counts, so nothing needs a restart.

Lua scripts are loaded once (``SCRIPT LOAD``) and called by SHA; after a Redis
restart emptied its script cache they are loaded again on the first
``NOSCRIPT``.
"""

from __future__ import annotations

import asyncio
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
        self.sha = ""

    def queue(self, pipe: Any, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Add a call of this script to ``pipe`` (a redis-py pipeline)."""
        pipe.evalsha(self.sha, len(keys), *keys, *args)

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self.link.eval(self, keys, args)


_Call = tuple[Script, Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


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
        self._busy = False
        """A script call is on the wire; calls arriving meanwhile wait in ``_queued``."""
        self._queued: list[_Call] = []
        self._batches: set[asyncio.Task[None]] = set()

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
        except Exception as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {redacted_url(self.url)}: {_reason(exc)}"
            ) from None
        metrics.redis_up(True)

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
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

    async def eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script``, pipelined with the calls of other tasks (automatic pipelining).

        The first call goes out at once; calls made while it is on the wire wait
        and then go out together as one pipeline, and so on. Under concurrency
        this saves most of the client's per-command CPU; alone, a call costs
        what a plain ``EVALSHA`` costs.
        """
        if self._busy:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queued.append((script, keys, args, future))
            return await future
        self._busy = True
        client = self.client
        try:
            return await self.run(lambda: client.evalsha(script.sha, len(keys), *keys, *args))
        finally:
            self._next_batch()

    def _next_batch(self) -> None:
        batch, self._queued = self._queued, []
        if not batch:
            self._busy = False
            return
        task = asyncio.get_running_loop().create_task(self._send_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _send_batch(self, batch: list[_Call]) -> None:
        try:
            results = await self.run(lambda: self._pipeline(batch))
        except BaseException as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable())
            if not isinstance(exc, Exception):
                raise
        else:
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue  # The caller was cancelled; the script still ran.
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._next_batch()

    async def _pipeline(self, batch: list[_Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            script.queue(pipe, keys, args)
        results = list(await pipe.execute(raise_on_error=False))
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # Redis restarted empty: those scripts did not run; load and run just them.
            await self._load_scripts()
            again = self.client.pipeline(transaction=False)
            for i in missing:
                script, keys, args, _ = batch[i]
                script.queue(again, keys, args)
            for i, result in zip(missing, await again.execute(raise_on_error=False), strict=True):
                results[i] = result
        for result in results:
            if isinstance(result, _FAULTS):
                raise result  # The connection failed: the outage path, for the whole batch.
        return results

    async def _load_scripts(self) -> None:
        for script in self._scripts:
            script.sha = await self.client.script_load(script.source)

    def _lost(self, exc: BaseException) -> None:
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
