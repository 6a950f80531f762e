"""The stream log in Redis: any process resumes a stream any other process produces.

Keys, per stream (one hash tag, so one Cluster slot; ``<p>`` is the prefix)::

    <p>{st:<id>}:log     Redis Stream: one entry per written batch, id <pos+1>-0 for the
                         batch's first new position pos, {b: the batch message (below)};
                         trimmed by MINID as the producer's own log is (max_pieces,
                         max_chars), to the entry holding the oldest position kept
    <p>{st:<id>}:info    hash: u user, m method, c created, o owner, s running|done, n pieces,
                         f finished at, r finish reason, e the end (JSON), x cancel asked
    <p>{st:<id>}:fol     sorted set: followers on any process -> lease expiry (ms)
    <p>{st:<id>}:live    pub/sub channel: each appended batch [first, [texts], [kinds]|null],
                         and b"e" once the end is written
    <p>{u:<id>}:streams  sorted set: the user's stream ids by creation time (for stream.list)
    <p>{n:<owner>}:alive the owner process's lease (PX lease_seconds), renewed every lease/3
    <p>{n:<owner>}:ctl   pub/sub channel: stream ids another process asks the owner to cancel

**Writing.** The producer keeps its own streams in a :class:`MemoryStreamLog` too,
until Redis holds all of a stream and its end (its local followers read that, no
Redis), and notes each stream's first position not yet in Redis. Every
``FLUSH_EVERY`` (20 ms; a create or an end goes at once) the append script is called
for every stream with pieces pending (read from the local log then), all in one
write on the process's multiplexed connection (:meth:`RedisLink.send_many`): one
``XADD`` of the batch and one ``PUBLISH`` of it, in one script, so the live order is
the log order. The batch travels as one JSON argument, stored and published as it is
(the script never decodes it: Lua work per piece was most of what Redis spent on a
stream), and the call's constant start is packed once per stream: redis-py packs
arguments in Python, so few and pre-packed ones are what keep this cheap. The script
skips a batch Redis already has and stores one that overlaps it whole, under the id
of its first new position (readers skip positions they hold), so a retried flush (a
reply lost to a fault) gives nobody a piece twice. A stream's create is written at
once, before its first pieces (one connection keeps the order), and its end at once
too, in one write after its last pieces. While Redis is unreachable the pieces wait
in the local log (bounded by its ``max_pieces`` and ``max_chars``: a resume before
what it dropped is a gap) and go out when it is back; the producing connection is
never held up by Redis.

**Following** (another process): subscribe to ``live`` first, then read the log from
the last position sent (``XREVRANGE`` for the entry holding the next position,
``XRANGE`` for those after it, with the info: one round trip), then take live
batches, skipping positions already sent; a batch that starts past the next
position, a lost pub/sub connection or a tail that overflowed means "read the log
again". With no message for ``CHECK_EVERY`` seconds the follower reads the log and
the info again: that also catches an end whose message was lost, and an owner that
died: a running stream whose owner's ``alive`` key is missing at two looks
``lease_seconds / 2`` apart is ended ``interrupted`` (one script, only if still
running under that owner). **The window:** a killed producer's streams end
``interrupted`` at most ``1.5 × lease_seconds + CHECK_EVERY`` after its last renewal
(24 s at the defaults).

**Cancelling** from another process sets the ``x`` flag and publishes the id
on the owner's control channel; the owner's heartbeat re-reads the flags of its
running streams every ``lease_seconds / 3``, so a lost message delays a cancel
by at most that long and never loses it.

TTLs: running keys live ``running_ttl`` (set with a stream's first pieces, renewed
by the heartbeat every ``lease_seconds / 3``), finished ones ``done_ttl``. After a
Redis restart that lost its data, the next flush writes the info again and the log
continues from the oldest piece still pending: a follower whose info vanished waits
up to ``OUTAGE_WAIT`` for that and goes on (or gets -32041 if it needed a lost
piece); a resume from before it gets -32041 (gap); a stream that had ended is
unknown (-32040).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson

from gateway.errors import StoreUnavailable, StreamGap, StreamNotFound
from gateway.node import node_id
from gateway.sessions.redislink import RedisLink
from gateway.sessions.redismux import resp
from gateway.streams.live import LiveFeed, stop_task
from gateway.streams.memory import MemoryStreamLog
from gateway.streams.protocol import LIST_LIMIT, Piece, StreamEnd, StreamInfo

__all__ = ["RedisStreamLog"]

log = logging.getLogger(__name__)

CHECK_EVERY = 1.0
"""Seconds a follower waits for a live message before it reads the log and the info again."""
READ_BATCH = 1000
"""Log entries per ``XRANGE``."""
OUTAGE_WAIT = 10.0
"""Seconds a follower rides out a Redis outage before its call fails with -32020."""
FLUSH_EVERY = 0.02
"""Seconds a stream's pieces may wait for more before they go to Redis (a create or an
end goes at once, with its stream's pieces): the script call per stream and write is most
of what the log costs, so a few pieces per call halve it. Followers on other processes see
pieces up to this much later than the producer's own connection."""

# The pieces travel as one JSON argument (the batch message, published as it is), and
# the header as another: redis-py packs every argument in Python, so few is cheap.
_CREATE = """
-- KEYS: info. ARGV: header [user, method, created, owner] (JSON), ttl ms.
-- Only once: a create sent again after a lost reply must not reset what followed it.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local h = cjson.decode(ARGV[1])
redis.call('HSET', KEYS[1], 'u', h[1], 'm', h[2], 'c', h[3], 'o', h[4], 's', 'running', 'n', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

_APPEND = """
-- KEYS: log, info. ARGV: channel, ttl ms, header (as for create), oldest entry id kept
-- ('' while nothing was trimmed), first position, count, batch message
-- [first position, [texts], [kinds] or null] (JSON: stored and published as it is, never
-- decoded here). One entry per batch, its id <first new position + 1>-0. TTLs are set here
-- only when the keys are new (the first pieces, or the info lost in a Redis restart); the
-- heartbeat renews them while the stream runs.
local state = redis.call('HMGET', KEYS[2], 'n', 's')
local have = tonumber(state[1])
if not have then
  local h = cjson.decode(ARGV[3])
  redis.call('HSET', KEYS[2], 'u', h[1], 'm', h[2], 'c', h[3], 'o', h[4], 's', 'running', 'n', 0)
  have = 0
elseif state[2] ~= 'running' then
  return 0
end
local first, count = tonumber(ARGV[5]), tonumber(ARGV[6])
if first + count <= have then return 0 end  -- a retried batch Redis already has
-- A retried batch may overlap what Redis has: readers skip positions they already hold.
redis.call('XADD', KEYS[1], (math.max(first, have) + 1) .. '-0', 'b', ARGV[7])
if ARGV[4] ~= '' then
  -- Keep the entry holding the oldest position kept (and all after it).
  local keep = redis.call('XREVRANGE', KEYS[1], ARGV[4], '-', 'COUNT', 1)
  if keep[1] then redis.call('XTRIM', KEYS[1], 'MINID', keep[1][1]) end
end
redis.call('HSET', KEYS[2], 'n', first + count)
if have == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
redis.call('PUBLISH', ARGV[1], ARGV[7])
return 1
"""

_FINISH = """
-- KEYS: log, info, followers. ARGV: channel, done ttl ms, end, finished at, reason,
-- user, method, created, owner, pieces.
if redis.call('HGET', KEYS[2], 's') == 'done' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'u', ARGV[6], 'm', ARGV[7], 'c', ARGV[8], 'o', ARGV[9],
             'n', ARGV[10])
end
redis.call('HSET', KEYS[2], 's', 'done', 'e', ARGV[3], 'f', ARGV[4], 'r', ARGV[5])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
redis.call('PUBLISH', ARGV[1], 'e')
return 1
"""

_INTERRUPT = """
-- KEYS: log, info, followers. ARGV: channel, owner, done ttl ms, end, finished at.
if redis.call('HGET', KEYS[2], 's') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[2], 'o') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], 's', 'done', 'e', ARGV[4], 'f', ARGV[5], 'r', 'interrupted')
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
redis.call('PUBLISH', ARGV[1], 'e')
return 1
"""

_CANCEL = """
-- KEYS: info. ARGV: control channel prefix, control channel suffix, stream id.
if redis.call('HGET', KEYS[1], 's') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'x', '1')
local owner = redis.call('HGET', KEYS[1], 'o')
redis.call('PUBLISH', ARGV[1] .. owner .. ARGV[2], ARGV[3])
return 1
"""

_INTERRUPTED = orjson.dumps({"r": {"finishReason": "interrupted"}})


class _Ours:
    """One of our running streams: its keys and header, computed once."""

    __slots__ = ("append", "header", "keys", "live", "written")

    def __init__(self, keys: list[str], live: str, header: list[str], append: bytes) -> None:
        self.keys = keys
        self.live = live
        self.header = header
        """[user, method, created, owner]: to write a lost info again."""
        self.append = append
        """The start of its append script call, packed: four arguments follow per call."""
        self.written = 0
        """The first position Redis does not have yet (its pieces wait in the local log)."""


class RedisStreamLog:
    """:class:`~gateway.streams.protocol.StreamLog` shared by every process on one Redis."""

    shared = True

    def __init__(
        self,
        link: RedisLink,
        *,
        # Limits
        max_pieces: int = 10_000,
        max_chars: int = 16 * 1024 * 1024,
        # Timeouts (seconds)
        done_ttl: float = 300.0,
        lease_seconds: float = 15.0,
        running_ttl: float | None = None,
    ) -> None:
        self._link = link
        self.done_ttl = done_ttl
        self.lease_seconds = lease_seconds
        self.running_ttl = running_ttl or max(4 * lease_seconds, 60.0)
        self._local = MemoryStreamLog(
            max_pieces=max_pieces, max_chars=max_chars, done_ttl=done_ttl, compact=False
        )
        self.append = self._local.append
        """Pieces go to our own log only: the flush, running while we have streams, finds
        what Redis lacks there (no call of ours per piece)."""
        self.owner = f"{node_id()}:{secrets.token_hex(4)}"
        """This process start's name in Redis (a restarted worker never inherits it)."""
        self._headers: dict[str, _Ours] = {}
        """Our running streams."""
        self._unfinished: dict[str, StreamEnd] = {}
        """Ends not written yet (Redis was away): the heartbeat retries them."""
        self._flush_task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._closing = False
        self._stop = asyncio.Event()
        self._on_cancel: Callable[[str], object] = lambda _: None
        self._create = link.script(_CREATE)
        self._append = link.script(_APPEND)
        self._finish = link.script(_FINISH)
        self._interrupt = link.script(_INTERRUPT)
        self._cancel = link.script(_CANCEL)
        self._live = LiveFeed(
            link.url, self._node_key(self.owner, "ctl").encode(), self._control,
            timeout=link.timeout,
        )  # fmt: skip

    # Keys

    def _key(self, stream_id: str, name: str) -> str:
        return self._link.key(f"st:{stream_id}", name)

    def _node_key(self, owner: str, name: str) -> str:
        return self._link.key(f"n:{owner}", name)

    def _keys(self, stream_id: str) -> list[str]:
        return [self._key(stream_id, name) for name in ("log", "info", "fol")]

    async def _run(self, build: Callable[[Any], None]) -> list[Any]:
        """One pipeline (``build`` queues its commands), through the link's outage handling."""
        client = self._link.client

        async def call() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            build(pipe)
            return list(await pipe.execute())

        return await self._link.run(call)

    def _started(self) -> None:
        if self._heartbeat is None:
            self._live.start()
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    # Writer

    async def create(self, info: StreamInfo) -> None:
        self._started()
        info.owner = self.owner
        await self._local.create(info)
        header = [info.user_id, info.method, repr(info.created_at), self.owner]
        header_json = orjson.dumps(header)
        keys, live = self._keys(info.stream_id), self._key(info.stream_id, "live")
        ttl = int(self.running_ttl * 1000)
        start = resp("EVALSHA", self._append.sha, 2, *keys[:2], live, ttl, header_json, then=4)
        ours = _Ours(keys, live, header, start)
        user_key = self._link.user_key(info.user_id, "streams")
        commands = [
            self._create.command(keys[1:2], [header_json, ttl]),
            resp("ZADD", user_key, repr(info.created_at), info.stream_id),
            # Only the newest LIST_LIMIT are ever listed: a bot's thousands of answers
            # would make every ZADD slower and the key big.
            resp("ZREMRANGEBYRANK", user_key, 0, -LIST_LIMIT - 1),
            resp("EXPIRE", user_key, int(self.running_ttl + self.done_ttl)),
        ]
        try:
            # In one write with whatever else this tick sends, before the stream's first
            # pieces (one connection keeps the order). No timer of its own: the connection
            # fails what is unanswered after ``redis_timeout``.
            await self._link.send_many(commands)
        except BaseException:
            await self._local.finish(info.stream_id, StreamEnd({"finishReason": "cancelled"}))
            raise
        self._headers[info.stream_id] = ours
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Write every stream's new pieces every ``FLUSH_EVERY``, in one write, while we
        have streams (a stream's last pieces go with its end: :meth:`finish`). What a write
        that failed held goes again with the next one: the written positions did not move
        (while Redis is away the local log's trimming bounds what waits)."""
        try:
            while self._headers and not self._closing:
                await asyncio.sleep(FLUSH_EVERY)
                try:
                    await self._write_pieces()
                except StoreUnavailable:
                    await asyncio.sleep(0.5)
                except Exception:
                    log.exception("stream log write failed")
        finally:
            self._flush_task = None

    async def _write_pieces(self) -> None:
        """Write every stream's pieces Redis lacks, in one write. Without Redis the written
        positions stay where they were, so the next write carries the pieces again."""
        commands: list[bytes] = []
        packed = self._appends(self._headers.items(), commands)
        try:
            await self._link.send_many(commands)
        except StoreUnavailable:
            raise
        except Exception:
            _advance(packed)  # not retried: it would fail again
            raise
        _advance(packed)

    def _appends(
        self, streams: Iterable[tuple[str, _Ours]], commands: list[bytes]
    ) -> list[tuple[_Ours, int]]:
        """Add to ``commands`` an append of each of ``streams`` with pieces Redis lacks;
        return each such stream with the position it will have written up to."""
        packed = []
        since = self._local.since
        for stream_id, ours in streams:
            # The local log's trimming (max_pieces, max_chars) applies: pieces it dropped are
            # neither logged nor published.
            kept, first, texts, kinds = since(stream_id, ours.written)
            if not texts:
                continue  # nothing new
            packed.append((ours, first + len(texts)))
            message = orjson.dumps([first, texts, kinds])
            oldest = b"%d-0" % (kept + 1) if kept else b""
            start, count = b"%d" % first, b"%d" % len(texts)
            # The last four arguments: the oldest entry kept, the batch's first position, its
            # length, and the batch (see _APPEND).
            tail = b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                len(oldest), oldest, len(start), start, len(count), count, len(message), message
            )  # fmt: skip
            commands.append(ours.append + tail)
        return packed

    async def finish(self, stream_id: str, end: StreamEnd) -> None:
        await self._local.finish(stream_id, end)
        if stream_id not in self._headers:
            return
        try:
            # Bounded: the connection fails what is unanswered after ``redis_timeout``.
            await asyncio.shield(self._write_end(stream_id, end))
        except StoreUnavailable:
            self._unfinished[stream_id] = end  # the heartbeat writes it once Redis is back
            log.warning("stream %s: end not written to Redis yet; retrying", stream_id)

    async def _write_end(self, stream_id: str, end: StreamEnd) -> None:
        """Write the stream's pieces Redis lacks, then its end (one write, no waiting for
        the next flush); then drop our own copy (readers here read Redis from now on; one
        already reading the copy ends from it)."""
        commands: list[bytes] = []
        packed = self._appends([(stream_id, self._headers[stream_id])], commands)
        commands.append(await self._end_command(stream_id, end))
        await self._link.send_many(commands)
        _advance(packed)
        self._unfinished.pop(stream_id, None)
        self._headers.pop(stream_id, None)
        self._local.forget(stream_id)

    async def _end_command(self, stream_id: str, end: StreamEnd) -> bytes:
        ours = self._headers[stream_id]
        info = await self._local.info(stream_id)
        pieces = info.pieces if info is not None else 0
        encoded = orjson.dumps({"r": end.result, "x": end.error})
        reason = end.finish_reason or ""
        args: list[bytes | str | int] = [ours.live, int(self.done_ttl * 1000), encoded]
        args += [repr(time.time()), reason, *ours.header, pieces]
        return self._finish.command(ours.keys, args)

    # Reader

    async def info(self, stream_id: str) -> StreamInfo | None:
        local = await self._local.info(stream_id)
        if local is not None:
            return local
        raw = (await self._run(lambda p: p.hgetall(self._key(stream_id, "info"))))[0]
        return _info(stream_id, raw) if raw else None

    async def read(self, stream_id: str, after: int) -> AsyncIterator[Piece | StreamEnd]:
        if await self._local.info(stream_id) is not None:
            async for item in self._local.read(stream_id, after):
                yield item
            return
        self._started()
        tail = await self._live.subscribe(self._key(stream_id, "live").encode())
        _raise_if_cancelling()
        token = secrets.token_hex(6)
        try:
            async for item in self._follow(stream_id, after, tail, token):
                yield item
        finally:
            await self._live.unsubscribe(tail)
            with contextlib.suppress(Exception):
                await self._run(lambda p: p.zrem(self._key(stream_id, "fol"), token))

    async def _follow(
        self, stream_id: str, after: int, tail: Any, token: str
    ) -> AsyncIterator[Piece | StreamEnd]:
        last = after
        owner_missing_since: float | None = None
        info_missing_since: float | None = None
        found = False
        log_key, info_key, fol_key = self._keys(stream_id)
        loop = asyncio.get_running_loop()
        while True:
            # Read the info, then the log from the last position sent (one round trip): the
            # info first, so the log read holds at least the pieces it counts.
            tail.stale = False
            tail.messages.clear()
            nxt = last + 1

            def build(pipe: Any, nxt: int = nxt) -> None:
                pipe.hgetall(info_key)
                pipe.xrevrange(log_key, max=f"{nxt + 1}-0", min="-", count=1)  # holds nxt?
                pipe.xrange(log_key, min=f"{nxt + 2}-0", count=READ_BATCH)
                pipe.zadd(fol_key, {token: int((time.time() + 3 * CHECK_EVERY) * 1000)})

            raw, held, entries, _ = await self._ride_out(build)
            if not raw:
                # Gone while we followed it: Redis came back empty. The producer writes the
                # info again with its next piece or its end; wait that long, as for an outage.
                if not found:
                    raise StreamNotFound()
                if info_missing_since is None:
                    info_missing_since = loop.time()
                elif loop.time() - info_missing_since >= OUTAGE_WAIT:
                    raise StreamNotFound()
                await asyncio.sleep(0.5)
                continue
            found, info_missing_since = True, None
            info = _info(stream_id, raw)
            got = False
            for _, fields in held + entries:
                first, texts, kinds = orjson.loads(fields[b"b"])
                if first + len(texts) <= last + 1:
                    continue  # an entry before the next position
                if first > last + 1:
                    raise StreamGap(data={"streamId": stream_id, "after": last, "firstSeq": first})
                for i in range(last + 1 - first, len(texts)):
                    yield Piece(first + i, texts[i], (kinds[i] or "text") if kinds else "text")
                last, got = first + len(texts) - 1, True
            if len(entries) == READ_BATCH:
                continue
            if last + 1 < info.pieces and not got:
                gap = {"streamId": stream_id, "after": last, "firstSeq": info.pieces}
                raise StreamGap(data=gap)
            if info.state == "done":
                if last + 1 >= info.pieces:
                    yield _end(raw)
                    return
                continue
            # Live: take batches until one does not follow on, or nothing comes for a while.
            quiet = False
            while True:
                await tail.wait(CHECK_EVERY)
                if tail.stale:
                    break
                if not tail.messages:
                    quiet = True
                    break
                data = tail.messages.popleft()
                if data == b"e":
                    break
                first, texts, kinds = orjson.loads(data)
                if first > last + 1:
                    break  # something was missed: read the log again
                for i in range(max(0, last + 1 - first), len(texts)):
                    yield Piece(first + i, texts[i], (kinds[i] or "text") if kinds else "text")
                last = max(last, first + len(texts) - 1)
            if quiet:
                # Quiet for CHECK_EVERY: is the owner still there?
                alive_key = self._node_key(info.owner, "alive")
                alive = await self._ride_out(functools.partial(_exists, key=alive_key))
                if alive[0]:
                    owner_missing_since = None
                elif owner_missing_since is None:
                    owner_missing_since = loop.time()
                elif loop.time() - owner_missing_since >= self.lease_seconds / 2:
                    args = [self._key(stream_id, "live"), info.owner, int(self.done_ttl * 1000)]
                    args += [_INTERRUPTED, repr(time.time())]
                    await self._ride_out(
                        functools.partial(
                            self._interrupt.queue, keys=self._keys(stream_id), args=args
                        )
                    )

    async def _ride_out(self, build: Callable[[Any], None]) -> list[Any]:
        """:meth:`_run` for a follower: wait up to OUTAGE_WAIT for Redis before failing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OUTAGE_WAIT
        while True:
            try:
                result = await self._run(build)
                _raise_if_cancelling()
                return result
            except StoreUnavailable:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    async def list(self, user_id: str) -> list[StreamInfo]:
        user_key = self._link.user_key(user_id, "streams")
        ids = (await self._run(lambda p: p.zrevrange(user_key, 0, LIST_LIMIT - 1)))[0]
        ids = [i.decode() for i in ids]
        if not ids:
            return []

        def build(pipe: Any) -> None:
            for stream_id in ids:
                pipe.hgetall(self._key(stream_id, "info"))

        rows = await self._run(build)
        found = [_info(sid, raw) for sid, raw in zip(ids, rows, strict=True) if raw]
        gone = [sid for sid, raw in zip(ids, rows, strict=True) if not raw]
        if gone:
            with contextlib.suppress(StoreUnavailable):
                await self._run(lambda p: p.zrem(user_key, *gone))
        return [info for info in found if info.user_id == user_id]

    # Across processes

    async def request_cancel(self, stream_id: str) -> None:
        prefix, suffix = self._node_key("\0", "ctl").split("\0")
        args = [prefix, suffix, stream_id]
        await self._run(lambda p: self._cancel.queue(p, [self._key(stream_id, "info")], args))

    def watch_cancels(self, on_cancel: Callable[[str], object]) -> None:
        self._on_cancel = on_cancel

    def _control(self, data: bytes) -> None:
        self._on_cancel(data.decode())

    async def followed_elsewhere(self, stream_id: str) -> bool:
        fol = self._key(stream_id, "fol")
        now = int(time.time() * 1000)
        count = (await self._run(lambda p: p.zcount(fol, now, "+inf")))[0]
        return bool(count)

    async def _beat(self) -> None:
        """Renew our lease and our running streams' TTLs, re-read their cancel flags, and
        write ends Redis missed, every ``lease_seconds / 3``."""
        alive = self._node_key(self.owner, "alive")
        lease_ms = int(self.lease_seconds * 1000)
        ttl = int(self.running_ttl * 1000)
        while not self._stop.is_set():
            running = [sid for sid in self._headers if sid not in self._unfinished]

            def build(pipe: Any, running: list[str] = running) -> None:
                pipe.set(alive, b"1", px=lease_ms)
                for stream_id in running:
                    log_key, info_key, _ = self._keys(stream_id)
                    pipe.pexpire(log_key, ttl)
                    pipe.pexpire(info_key, ttl)
                    pipe.hget(info_key, "x")

            try:
                results = await self._run(build)
                for stream_id, flag in zip(running, results[3::3], strict=True):
                    if flag:
                        self._on_cancel(stream_id)
                for stream_id, end in list(self._unfinished.items()):
                    await self._write_end(stream_id, end)
            except StoreUnavailable:
                pass  # logged by the link
            except Exception:
                log.exception("stream heartbeat failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_seconds / 3):
                    await self._stop.wait()

    async def aclose(self) -> None:
        self._closing = True
        if self._flush_task is not None:
            self._flush_task.cancel()  # the last pieces go now, below
            with contextlib.suppress(BaseException):
                await self._flush_task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._link.timeout * 3):
                await self._write_pieces()
        for stream_id, end in list(self._unfinished.items()):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._link.timeout):
                    await self._write_end(stream_id, end)
        if self._heartbeat is not None:
            # Stopped by a flag, not cancelled: redis-py's asyncio client has been seen to
            # swallow a cancellation that arrives mid-command.
            self._stop.set()
            await stop_task(self._heartbeat, self._link.timeout * 3)
            self._heartbeat = None
            with contextlib.suppress(Exception):
                await self._link.client.delete(self._node_key(self.owner, "alive"))
        await self._live.aclose()


def _advance(packed: list[tuple[_Ours, int]]) -> None:
    for ours, upto in packed:
        ours.written = upto


def _raise_if_cancelling() -> None:
    """A reader stops when cancelled even if redis-py's asyncio client swallowed the
    cancellation mid-command (seen with redis-py 8)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


def _exists(pipe: Any, key: str) -> None:
    pipe.exists(key)


def _info(stream_id: str, raw: dict[bytes, bytes]) -> StreamInfo:
    def text(key: bytes) -> str:
        return raw.get(key, b"").decode()

    finished = text(b"f")
    return StreamInfo(
        stream_id=stream_id,
        user_id=text(b"u"),
        method=text(b"m"),
        created_at=float(text(b"c") or 0),
        state="done" if text(b"s") == "done" else "running",
        pieces=int(text(b"n") or 0),
        finished_at=float(finished) if finished else None,
        finish_reason=text(b"r") or None,
        owner=text(b"o"),
    )


def _end(raw: dict[bytes, bytes]) -> StreamEnd:
    end = orjson.loads(raw.get(b"e", b"{}"))
    return StreamEnd(end.get("r"), end.get("x"))
