"""The Redis session store: one hash per user, one sorted-set index, all updates in Lua.

Keys (``<p>`` is ``[sessions] prefix``)::

    <p>{u:<id>}:s        hash: m (model), c (created), l (lastActivity),
                         pt, ct, r (usage counts), x (cost); TTL max_age + slack
    <p>{idx}:sessions    sorted set: user id -> lastActivity (newest last)
    <p>{idx}:who         hash: user id -> model (exact per-model counts on cleanup)
    <p>{idx}:models      hash: model -> sessions on it
    <p>{idx}:evicted     counter: sessions evicted at max_sessions

A user's keys share the hash tag ``{u:<id>}`` and the index keys share
``{idx}``, so each script touches one Cluster slot. A session read costs one
round trip, one script on the user's hash. The session's ``lastActivity`` is
written on every access and never stale; its copy in the index (the score)
is refreshed by a process at most every ``INDEX_EVERY`` seconds per user (in
the same pipeline), so the index order and ``activeSessions`` lag by at most
that. A second round trip happens only when a session is new, changes model or
was missing from the index. ``getSessionStats`` reads counters and counts a
range of the index (``ZCOUNT``); nothing on a request path scans keys.

Idle sessions: every process's periodic cleanup drops index entries older
than ``max_age_hours`` (and their hashes, unless they became active again);
each hash also carries a TTL of ``max_age_hours`` plus a day, so sessions
expire even when no gateway runs cleanup.
"""

from __future__ import annotations

from typing import Any

from gateway.sessions.redislink import RedisLink
from gateway.sessions.store import SessionData, StoreStats

__all__ = ["RedisSessionStore"]

_FIELDS = ("m", "c", "l", "pt", "ct", "r", "x")

# KEYS[1] user hash; ARGV model, now, ttl, set (1: set the model, 0: only on creation).
# Returns {created, old model or false, m, c, l, pt, ct, r, x}.
_TOUCH = """
local k = KEYS[1]
local old = redis.call('HGET', k, 'm')
local created = 0
if not old then
  redis.call('HSET', k, 'm', ARGV[1], 'c', ARGV[2], 'l', ARGV[2],
             'pt', 0, 'ct', 0, 'r', 0, 'x', 0)
  created = 1
elseif ARGV[4] == '1' then
  redis.call('HSET', k, 'm', ARGV[1], 'l', ARGV[2])
else
  redis.call('HSET', k, 'l', ARGV[2])
end
redis.call('EXPIRE', k, ARGV[3])
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

# KEYS[1] user hash; ARGV prompt, completion, cost.
_USAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'pt', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'ct', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'r', 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'x', ARGV[3])
return 1
"""

CLEANUP_BATCH = 1000
INDEX_EVERY = 30.0
"""Seconds a process lets a user's index score lag behind ``lastActivity`` at most."""
INDEXED_MAX = 100_000
"""Users whose last index write this process remembers (forgotten all at once beyond)."""


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
        """user id -> when this process last wrote the user's index score."""

    def _key(self, user_id: str) -> str:
        return self._link.user_key(user_id, "s")

    async def _access(self, user_id: str, model: str, now: float, set_model: bool) -> SessionData:
        key = self._key(user_id)
        client = self._link.client
        args = [model, repr(now), self._ttl, int(set_model)]
        indexed = self._indexed.get(user_id)
        if indexed is not None and now - indexed < self._index_every and not set_model:
            created, old, *values = await self._touch([key], args)
            missing = 0
            if created:  # Evicted or expired meanwhile: index it now.
                missing = await self._seen([self._idx, self._who], [user_id, repr(now)])
        else:

            async def both() -> list[Any]:
                pipe = client.pipeline(transaction=False)
                self._touch.queue(pipe, [key], args)
                self._seen.queue(pipe, [self._idx, self._who], [user_id, repr(now)])
                return list(await pipe.execute())

            (created, old, *values), missing = await self._link.run(both)
            if len(self._indexed) >= INDEXED_MAX:
                self._indexed.clear()
            self._indexed[user_id] = now
        session = _session(user_id, values)
        if created or missing or (set_model and old is not None and _text(old) != model):
            keys = [self._idx, self._who, self._models, self._evicted]
            args = [user_id, session.current_model, self._max, repr(now)]
            evicted = await self._index(keys, args)
            if evicted:
                await self._link.run(lambda: client.delete(*(self._key(_text(u)) for u in evicted)))
        return session

    async def touch(self, user_id: str, default_model: str, now: float) -> SessionData:
        return await self._access(user_id, default_model, now, False)

    async def set_model(self, user_id: str, model: str, now: float) -> SessionData:
        return await self._access(user_id, model, now, True)

    async def add_usage(
        self, user_id: str, prompt_tokens: int, completion_tokens: int, cost: float, now: float
    ) -> None:
        await self._usage([self._key(user_id)], [prompt_tokens, completion_tokens, repr(cost)])

    async def cleanup(self, older_than: float) -> int:
        removed = 0
        while True:
            users = await self._cleanup(
                [self._idx, self._who, self._models], [repr(older_than), CLEANUP_BATCH]
            )
            for user in users:
                removed += 1
                user_id = _text(user)
                if not await self._drop([self._key(user_id)], [repr(older_than)]):
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
