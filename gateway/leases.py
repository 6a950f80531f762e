"""Per-user concurrency counts (connections, streams), in memory or shared through Redis.

``connections_per_user`` and ``streams_per_user`` are counted here. With
Redis, every process adds its count to one hash per user and kind::

    <p>{u:<id>}:l<kind>   hash: <owner> -> count, <owner>@ -> lease expiry (ms, Redis clock)

``<owner>`` is the node id plus a random suffix per process start, so a
restarted worker never inherits its predecessor's counts. Taking a slot is one
script: it drops the counts of owners whose lease expired, sums the rest and
refuses at the limit, so N processes refuse at exactly the point one does.
Each process renews its leases every ``lease_seconds / 3`` (one pipelined
script per user it holds, which also writes its true local count, so counts
released while Redis was away are corrected on the next renewal).

**The window:** a process that dies without releasing stops renewing; its
counts stop counting at most ``lease_seconds`` (default 15 s) after its last
renewal, so at most ``lease_seconds`` after it died.

Cost: renewing is one script per user a process holds, pipelined by 1,000;
10,000 users cost about 0.25 s of client CPU per renewal on a 2-core VM, 5 %
of a core at the default 5 s interval.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections import Counter
from typing import Literal, Protocol

from gateway.errors import StoreUnavailable
from gateway.node import node_id
from gateway.sessions.redislink import RedisLink

__all__ = ["Kind", "Leases", "MemoryLeases", "RedisLeases"]

log = logging.getLogger(__name__)

RENEW_BATCH = 1000
"""Lease renewals per pipeline."""

Kind = Literal["conn", "stream"]
"""What a lease counts: an open connection or a running stream."""


class Leases(Protocol):
    """Counts per user and kind; ``acquire`` refuses at ``most``."""

    async def acquire(self, kind: Kind, user_id: str, most: int) -> bool:
        """Take one slot; False if the user already holds ``most`` (nothing taken)."""
        ...

    async def release(self, kind: Kind, user_id: str) -> None:
        """Give back a slot taken by :meth:`acquire`; never raises."""
        ...

    def held(self, kind: Kind) -> Counter[str]:
        """This process's own counts per user (for tests and health)."""
        ...


class MemoryLeases:
    """One process's counts, nothing shared (the embedded default)."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {"conn": Counter(), "stream": Counter()}

    async def acquire(self, kind: Kind, user_id: str, most: int) -> bool:
        counts = self._counts[kind]
        if counts[user_id] >= most:
            return False
        counts[user_id] += 1
        return True

    async def release(self, kind: Kind, user_id: str) -> None:
        _decrement(self._counts[kind], user_id)

    def held(self, kind: Kind) -> Counter[str]:
        return self._counts[kind]


def _decrement(counts: Counter[str], user_id: str) -> None:
    counts[user_id] -= 1
    if counts[user_id] <= 0:
        del counts[user_id]


_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] lease hash; ARGV owner, lease ms, most. Returns 1 if taken, 0 if at the limit.
_ACQUIRE = (
    _NOW_MS
    + """
local k, owner, lease, most = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local flat = redis.call('HGETALL', k)
local t = {}
for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
local total = 0
for name, value in pairs(t) do
  if string.sub(name, -1) ~= '@' then
    if tonumber(t[name .. '@'] or '0') < now then
      redis.call('HDEL', k, name, name .. '@')
    else
      total = total + tonumber(value)
    end
  end
end
if total >= most then return 0 end
redis.call('HINCRBY', k, owner, 1)
redis.call('HSET', k, owner .. '@', now + lease)
redis.call('PEXPIRE', k, lease)
return 1
"""
)

# KEYS[1] lease hash; ARGV owner.
_RELEASE = """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1], ARGV[1] .. '@')
end
return 1
"""

# KEYS[1] lease hash; ARGV owner, count, lease ms: this owner holds ``count`` now.
_RENEW = (
    _NOW_MS
    + """
local k, owner, count, lease = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if count <= 0 then
  redis.call('HDEL', k, owner, owner .. '@')
  return 0
end
redis.call('HSET', k, owner, count, owner .. '@', now + lease)
if redis.call('PTTL', k) < lease then redis.call('PEXPIRE', k, lease) end
return 1
"""
)


class RedisLeases:
    """Counts shared by every process on one Redis, held as leases this process renews."""

    def __init__(self, link: RedisLink, *, lease_seconds: float = 15.0) -> None:
        self._link = link
        self.lease_seconds = lease_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self.owner = f"{node_id()}:{secrets.token_hex(4)}"
        self._counts: dict[str, Counter[str]] = {"conn": Counter(), "stream": Counter()}
        self._stale: set[tuple[str, str]] = set()
        """(kind, user) whose Redis count may be off (a release that failed)."""
        self._acquire = link.script(_ACQUIRE)
        self._release = link.script(_RELEASE)
        self._renew = link.script(_RENEW)
        link.on_recover.append(self.renew)

    def _key(self, kind: str, user_id: str) -> str:
        return self._link.user_key(user_id, f"l{kind}")

    async def acquire(self, kind: Kind, user_id: str, most: int) -> bool:
        try:
            taken = await self._acquire(
                [self._key(kind, user_id)], [self.owner, self._lease_ms, most]
            )
        except StoreUnavailable:
            self._stale.add((kind, user_id))  # It may have been taken before the reply was lost.
            raise
        if not taken:
            return False
        self._counts[kind][user_id] += 1
        return True

    async def release(self, kind: Kind, user_id: str) -> None:
        # Local first: a cancelled or failed release is corrected by the next renewal.
        _decrement(self._counts[kind], user_id)
        try:
            await self._release([self._key(kind, user_id)], [self.owner])
        except StoreUnavailable:
            self._stale.add((kind, user_id))
        except asyncio.CancelledError:
            self._stale.add((kind, user_id))
            raise

    def held(self, kind: Kind) -> Counter[str]:
        return self._counts[kind]

    async def renew(self) -> None:
        """Renew every lease of this process (and correct counts left stale)."""
        items = {(kind, user) for kind, counts in self._counts.items() for user in counts}
        stale, self._stale = self._stale, set()
        items |= stale
        if not items:
            return
        client = self._link.client
        ordered = sorted(items)

        async def pipeline(batch: list[tuple[str, str]]) -> None:
            pipe = client.pipeline(transaction=False)
            for kind, user in batch:
                count = self._counts[kind].get(user, 0)
                args = [self.owner, count, self._lease_ms]
                self._renew.queue(pipe, [self._key(kind, user)], args)
            await pipe.execute()

        try:
            # In batches: each reply arrives well within the socket timeout.
            for i in range(0, len(ordered), RENEW_BATCH):
                await self._link.run(functools.partial(pipeline, ordered[i : i + RENEW_BATCH]))
        except StoreUnavailable:
            self._stale |= stale
            raise

    async def run_renewals(self) -> None:
        """Renew every ``lease_seconds / 3`` until cancelled."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except StoreUnavailable:
                pass  # Logged by the link; renewed again once Redis is back.
            except Exception:
                log.exception("lease renewal failed")
