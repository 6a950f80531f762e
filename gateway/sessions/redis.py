"""The Redis session store: one hash per user, one sorted-set index, all updates in Lua.

Keys (``<p>`` is ``[sessions] prefix``)::

    <p>s:{u:<id>}        hash: m (model), c (created), l (lastActivity),
                         pt, ct, r (usage counts), x (cost); TTL max_age + slack
    <p>{idx}:sessions    sorted set: user id -> lastActivity (newest last)
    <p>{idx}:who         hash: user id -> model (exact per-model counts on cleanup)
    <p>{idx}:models      hash: model -> sessions on it
    <p>{idx}:evicted     counter: sessions evicted at max_sessions

A user's keys share the hash tag ``{u:<id>}`` and the index keys share
``{idx}``, so each script touches one Cluster slot. The session hashes have
a prefix of their own (``<p>s:``) so that Redis can track exactly them.

**The session cache.** Each process keeps the sessions it read in memory,
coherent through Redis client-side caching (``CLIENT TRACKING ... BCAST
PREFIX <p>s:``, see :mod:`gateway.sessions.redismux`): any change of a
session hash by another process, its expiry or a flush makes Redis push an
invalidation, and the entry goes; this process's own writes return the new
state. A session read that hits the cache costs no round trip. A model set
through process A is seen by process B's next call: ``set_model`` returns
only after Redis has written the invalidation to every other process (see
:meth:`RedisMux.barrier`), and B reads its cache only with no unread bytes on
its Redis connection, so on one host a client that got A's answer is served
the new model by B; across hosts, after the network delay from Redis to B.
When the connection is lost (or silent for 1.5 × ``redis_timeout``) the
cache is flushed and unused until it is back.

**lastActivity is coalesced.** A process writes a user's ``lastActivity``
(and refreshes the TTL and the index score) at most once per
``index_every`` (``INDEX_EVERY``, 30 s) per user; a call in between is
answered from the cache, or read without writing. The session a call
returns carries the call's own time, but the value in Redis (what other
processes, ``getAllSessions`` and cleanup see) and the index order lag the
user's last call by less than ``index_every``. A second round trip happens
only when a session is new, changes model or was missing from the index.
``getSessionStats`` reads counters and counts a range of the index
(``ZCOUNT``); nothing on a request path scans keys.

Idle sessions: every process's periodic cleanup drops index entries older
than ``max_age_hours`` (and their hashes, unless they became active again);
each hash also carries a TTL of ``max_age_hours`` plus a day, so sessions
expire even when no gateway runs cleanup.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.sessions.redislink import RedisLink
from gateway.sessions.store import SessionData, StoreStats

__all__ = ["RedisSessionStore"]

_FIELDS = ("m", "c", "l", "pt", "ct", "r", "x")

# KEYS[1] user hash; ARGV model, now, ttl, set (1: set the model, 0: only on creation),
# write (1: write lastActivity and the TTL; 0: only on creation).
# Returns {created, old model or false, m, c, l, pt, ct, r, x}.
_TOUCH = """
local k = KEYS[1]
local old = redis.call('HGET', k, 'm')
local created = 0
if not old then
  redis.call('HSET', k, 'm', ARGV[1], 'c', ARGV[2], 'l', ARGV[2],
             'pt', 0, 'ct', 0, 'r', 0, 'x', 0)
  redis.call('EXPIRE', k, ARGV[3])
  created = 1
elseif ARGV[4] == '1' then
  redis.call('HSET', k, 'm', ARGV[1], 'l', ARGV[2])
  redis.call('EXPIRE', k, ARGV[3])
elseif ARGV[5] == '1' then
  redis.call('HSET', k, 'l', ARGV[2])
  redis.call('EXPIRE', k, ARGV[3])
end
local v = redis.call('HMGET', k, 'm', 'c', 'l', 'pt', 'ct', 'r', 'x')
return {created, old or false, v[1], v[2], v[3], v[4], v[5], v[6], v[7]}
"""

# KEYS index, who; ARGV user, now. Returns 1 when the user is missing from ``who``.
_SEEN = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 1 end
return 0
"""

_DECR_MODEL = """
local function decr(models, m)
  if m and redis.call('HINCRBY', models, m, -1) <= 0 then redis.call('HDEL', models, m) end
end
"""

# KEYS index, who, models, evicted; ARGV user, model, max, now. Records the user's model
# (and keeps the user in the index: a cleanup may have run in between), and for a new
# user evicts the least recently active beyond max. Returns evicted ids.
_INDEX = (
    _DECR_MODEL
    + """
local idx, who, models, evicted = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user, model, most = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('ZADD', idx, 'NX', ARGV[4], user)
local old = redis.call('HGET', who, user)
if old == model then return {} end
redis.call('HSET', who, user, model)
redis.call('HINCRBY', models, model, 1)
if old then decr(models, old) return {} end
local out = {}
while redis.call('ZCARD', idx) > most do
  local popped = redis.call('ZPOPMIN', idx)
  local u = popped[1]
  if u == user then redis.call('ZADD', idx, popped[2], u) break end
  decr(models, redis.call('HGET', who, u))
  redis.call('HDEL', who, u)
  redis.call('INCR', evicted)
  table.insert(out, u)
end
return out
"""
)

# KEYS index, who, models; ARGV cutoff, limit. Drops index entries idle since before
# cutoff; returns their user ids.
_CLEANUP = (
    _DECR_MODEL
    + """
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
for _, u in ipairs(users) do
  redis.call('ZREM', KEYS[1], u)
  decr(KEYS[3], redis.call('HGET', KEYS[2], u))
  redis.call('HDEL', KEYS[2], u)
end
return users
"""
)

# KEYS[1] user hash; ARGV cutoff. Deletes the session unless it was active since.
_DROP_IF_IDLE = """
local l = redis.call('HGET', KEYS[1], 'l')
if l and tonumber(l) < tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

# KEYS[1] user hash; ARGV prompt, completion, cost. Returns the session after, or false.
_USAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HINCRBY', KEYS[1], 'pt', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'ct', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'r', 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'x', ARGV[3])
return redis.call('HMGET', KEYS[1], 'm', 'c', 'l', 'pt', 'ct', 'r', 'x')
"""

CLEANUP_BATCH = 1000
INDEX_EVERY = 30.0
"""Seconds a process lets a user's lastActivity and index score in Redis lag at most."""
INDEXED_MAX = 100_000
"""Users whose last write, and sessions, this process remembers (forgotten all at once beyond)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _session(user_id: str, values: list[Any]) -> SessionData:
    m, c, last, pt, ct, r, x = values
    return SessionData(
        user_id=user_id,
        current_model=_text(m),
        created_at=float(c),
        last_activity=float(last),
        prompt_tokens=int(pt),
        completion_tokens=int(ct),
        requests=int(r),
        cost=float(x),
    )


class RedisSessionStore:
    """The memory store's semantics, shared by every process on one Redis."""

    def __init__(
        self,
        link: RedisLink,
        *,
        max_sessions: int = 100_000,
        max_age_hours: float = 24.0,
        index_every: float = INDEX_EVERY,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._link = link
        self._max = max_sessions
        self._ttl = int(max_age_hours * 3600) + 86_400
        self._idx = link.key("idx", "sessions")
        self._who = link.key("idx", "who")
        self._models = link.key("idx", "models")
        self._evicted = link.key("idx", "evicted")
        self._touch = link.script(_TOUCH)
        self._seen = link.script(_SEEN)
        self._index = link.script(_INDEX)
        self._cleanup = link.script(_CLEANUP)
        self._drop = link.script(_DROP_IF_IDLE)
        self._usage = link.script(_USAGE)
        self._index_every = index_every
        self._indexed: dict[str, float] = {}
        """user id -> when this process last wrote the user's lastActivity and index score."""
        self._cache: dict[str, SessionData] = {}
        """user id -> the session as last read or written by this process (see above)."""
        self._spfx = f"{link.prefix}s:"
        link.track(self._spfx, self._invalidated)

    def _key(self, user_id: str) -> str:
        return f"{self._spfx}{{u:{user_id}}}"

    def _invalidated(self, keys: list[bytes] | None) -> None:
        if keys is None:
            self._cache.clear()
            return
        start = len(self._spfx) + 3  # "{u:"
        cache = self._cache
        for key in keys:
            cache.pop(key[start:-1].decode(errors="replace"), None)

    def _cached(self, user_id: str, session: SessionData, add: bool) -> None:
        """Keep ``session`` (a reply, applied in order with invalidations) if wanted."""
        if add or user_id in self._cache:
            if len(self._cache) >= INDEXED_MAX:
                self._cache.clear()
            self._cache[user_id] = session

    async def _access(self, user_id: str, model: str, now: float, set_model: bool) -> SessionData:
        indexed = self._indexed.get(user_id)
        due = set_model or indexed is None or now - indexed >= self._index_every
        if not due:
            session = self._cache.get(user_id)
            if session is not None and await self._link.fresh():
                session.last_activity = now
                return session
        key = self._key(user_id)
        args = [model, repr(now), self._ttl, int(set_model), int(due)]
        got: list[SessionData] = []

        def keep(reply: list[Any]) -> None:
            session = _session(user_id, reply[2:])
            got.append(session)
            # A touch caches what it read; set_model only refreshes an entry it finds,
            # so users who never read (idle connections) cost no memory.
            self._cached(user_id, session, not set_model)

        if due:
            # Both go out in one write (the link pipelines calls of one loop tick).
            (created, old, *_), missing = await asyncio.gather(
                self._touch([key], args, keep),
                self._seen([self._idx, self._who], [user_id, repr(now)]),
            )
            if len(self._indexed) >= INDEXED_MAX:
                self._indexed.clear()
            self._indexed[user_id] = now
        else:
            created, old, *_ = await self._touch([key], args, keep)
            missing = 0
            if created:  # Evicted or expired meanwhile: index it now.
                missing = await self._seen([self._idx, self._who], [user_id, repr(now)])
        session = got[0]
        session.last_activity = now
        if created or missing or (set_model and old is not None and _text(old) != model):
            keys = [self._idx, self._who, self._models, self._evicted]
            args = [user_id, session.current_model, self._max, repr(now)]
            evicted = await self._index(keys, args)
            if evicted:
                for user in evicted:
                    self._cache.pop(_text(user), None)
                client = self._link.client
                await self._link.run(lambda: client.delete(*(self._key(_text(u)) for u in evicted)))
        if set_model:
            await self._link.barrier()
        return session

    async def touch(self, user_id: str, default_model: str, now: float) -> SessionData:
        return await self._access(user_id, default_model, now, False)

    async def set_model(self, user_id: str, model: str, now: float) -> SessionData:
        return await self._access(user_id, model, now, True)

    async def add_usage(
        self, user_id: str, prompt_tokens: int, completion_tokens: int, cost: float, now: float
    ) -> None:
        def keep(reply: list[Any] | None) -> None:
            if reply:
                self._cached(user_id, _session(user_id, reply), False)

        key = self._key(user_id)
        await self._usage([key], [prompt_tokens, completion_tokens, repr(cost)], keep)

    async def cleanup(self, older_than: float) -> int:
        removed = 0
        while True:
            users = await self._cleanup(
                [self._idx, self._who, self._models], [repr(older_than), CLEANUP_BATCH]
            )
            for user in users:
                removed += 1
                user_id = _text(user)

                # Dropped through this process's own connection: no invalidation comes back.
                def forget(dropped: int, user_id: str = user_id) -> None:
                    if dropped:
                        self._cache.pop(user_id, None)

                if not await self._drop([self._key(user_id)], [repr(older_than)], forget):
                    removed -= 1
                    await self._reindex(user_id)
            if len(users) < CLEANUP_BATCH:
                return removed

    async def _reindex(self, user_id: str) -> None:
        """Index a session that became active while cleanup dropped it from the index."""
        client = self._link.client
        model, last = await self._link.run(lambda: client.hmget(self._key(user_id), "m", "l"))
        if model is None:
            return
        await self._seen([self._idx, self._who], [user_id, _text(last)])
        keys = [self._idx, self._who, self._models, self._evicted]
        await self._index(keys, [user_id, _text(model), self._max, _text(last)])

    async def stats(self, now: float) -> StoreStats:
        client = self._link.client

        async def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.zcard(self._idx)
            pipe.zcount(self._idx, now - 3600, "+inf")
            pipe.hgetall(self._models)
            pipe.get(self._evicted)
            return list(await pipe.execute())

        total, active, models, evicted = await self._link.run(read)
        return StoreStats(
            total=int(total),
            active_last_hour=int(active),
            models={_text(k): int(v) for k, v in models.items() if int(v) > 0},
            evicted=int(evicted or 0),
        )

    async def sessions(self, limit: int) -> list[SessionData]:
        client = self._link.client
        newest = await self._link.run(lambda: client.zrevrange(self._idx, 0, limit - 1))
        users = [_text(u) for u in newest]

        async def read() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for user in users:
                pipe.hmget(self._key(user), *_FIELDS)
            return list(await pipe.execute())

        rows = await self._link.run(read) if users else []
        return [_session(u, v) for u, v in zip(users, rows, strict=True) if v[0] is not None]
