"""The Redis store's per-process session cache: no round trip on a hit, never stale.

Two links on one private Redis stand for two gateway processes. Every fault
is real: Redis stopped and started again, the tracking connection killed by
``CLIENT KILL``, Redis frozen with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.errors import StoreUnavailable
from gateway.sessions.redis import RedisSessionStore
from gateway.sessions.redislink import RedisLink
from tests.redis_support import TEST_REDIS_TIMEOUT, RedisServer, redis, redis_available

pytestmark = pytest.mark.skipif(not redis_available(), reason="needs redis-server")

TIMEOUT = 10.0
__all__ = ["redis"]  # fixture
Pair = tuple[RedisSessionStore, RedisSessionStore]


@pytest.fixture
async def make_pair(redis: RedisServer) -> AsyncIterator[Callable[..., Awaitable[Pair]]]:
    """Two stores ("processes" A and B), each with its own link, on the same Redis."""
    links: list[RedisLink] = []

    async def make(timeout: float = TEST_REDIS_TIMEOUT) -> Pair:
        stores = []
        for _ in range(2):
            link = RedisLink(redis.url, prefix="c:", timeout=timeout)
            stores.append(RedisSessionStore(link, index_every=3600.0))
            links.append(link)
            async with asyncio.timeout(TIMEOUT):
                await link.connect()
        return stores[0], stores[1]

    yield make
    for link in links:
        await link.aclose()


async def _script_calls(url: str) -> int:
    """EVALSHA calls Redis has served so far (its own count)."""
    client = aioredis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _until(read: Callable[[], Awaitable[Any]], want: Any) -> Any:
    async with asyncio.timeout(TIMEOUT):
        while (got := await read()) != want:
            await asyncio.sleep(0.02)
    return got


async def test_a_cached_session_costs_no_round_trip(
    make_pair: Callable[..., Awaitable[Pair]], redis: RedisServer
) -> None:
    """Once read, 50 more reads of a session are answered without asking Redis."""
    a, _ = await make_pair()
    await a.touch("alice", "m1", now=1.0)
    await a.touch("alice", "m1", now=2.0)  # The first read's own write evicted it; read again.
    before = await _script_calls(redis.url)
    seen = []
    for i in range(50):
        session = await a.touch("alice", "m1", now=3.0 + i)
        seen.append((session.current_model, session.last_activity))
    after = await _script_calls(redis.url)
    assert after == before
    assert seen == [("m1", 3.0 + i) for i in range(50)]


async def test_a_model_set_through_one_process_is_read_by_the_other_at_once(
    make_pair: Callable[..., Awaitable[Pair]],
) -> None:
    """B caches alice; A sets her model; B's very next read (no waiting) has the new model."""
    a, b = await make_pair()
    await b.touch("alice", "m1", now=1.0)
    await b.touch("alice", "m1", now=2.0)
    for i, model in enumerate(["m2", "m3", "m2", "m4"]):
        await a.set_model("alice", model, now=3.0 + i)
        assert (await b.touch("alice", "m1", now=3.5 + i)).current_model == model


async def test_usage_and_flushes_in_redis_reach_the_cached_session(
    make_pair: Callable[..., Awaitable[Pair]], redis: RedisServer
) -> None:
    """Usage added elsewhere and a FLUSHALL both replace what B has cached."""
    a, b = await make_pair()
    for now in (1.0, 2.0):
        await b.touch("alice", "m1", now=now)
    await a.add_usage("alice", 3, 4, 0.0, now=3.0)

    async def requests() -> int:
        return (await b.touch("alice", "m1", now=4.0)).requests

    await _until(requests, 1)
    client = aioredis.Redis.from_url(redis.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()

    async def created() -> float:
        return (await b.touch("alice", "m1", now=5.0)).created_at

    await _until(created, 5.0)  # A session made anew, not the cached one of t=1.


async def test_the_cache_is_flushed_when_redis_restarts_so_changes_meanwhile_are_seen(
    make_pair: Callable[..., Awaitable[Pair]], redis: RedisServer
) -> None:
    """A Redis restart drops the tracking connection: nothing cached before it is served."""
    a, _ = await make_pair(timeout=0.5)
    for now in (1.0, 2.0):
        assert (await a.touch("alice", "m1", now=now)).current_model == "m1"
    await asyncio.to_thread(redis.stop)
    await asyncio.to_thread(redis.start)
    # Written while A could not hear about it (no invalidation will ever come).
    client = aioredis.Redis.from_url(redis.url)
    try:
        await client.hset("c:s:{u:alice}", mapping={"m": "changed", "c": 1, "l": 2})
        await client.hset("c:s:{u:alice}", mapping={"pt": 0, "ct": 0, "r": 0, "x": 0})
    finally:
        await client.aclose()

    async def model() -> str:
        try:
            return (await a.touch("alice", "m1", now=3.0)).current_model
        except StoreUnavailable:
            return "unavailable"

    await _until(model, "changed")


async def test_a_killed_tracking_connection_flushes_the_cache_and_comes_back(
    make_pair: Callable[..., Awaitable[Pair]], redis: RedisServer
) -> None:
    """CLIENT KILL of B's tracking connection, then a change B cannot hear about:
    B forgets what it cached, reconnects by itself, and reads the change."""
    _, b = await make_pair(timeout=0.5)
    for now in (1.0, 2.0):
        await b.touch("alice", "m1", now=now)
    client = aioredis.Redis.from_url(redis.url)
    try:
        tracking = [c for c in await client.client_list() if "t" in c["flags"]]
        assert len(tracking) == 2  # One per link.
        for entry in tracking:
            await client.client_kill_filter(_id=entry["id"])
        # Before B's probe (every 0.5 s) reconnects: no invalidation reaches B.
        await client.hset("c:s:{u:alice}", "m", "m2")
    finally:
        await client.aclose()

    async def model() -> str:
        try:
            return (await b.touch("alice", "m1", now=4.0)).current_model
        except StoreUnavailable:
            return "unavailable"

    await _until(model, "m2")


async def test_a_frozen_redis_stops_the_cache_from_being_read(
    make_pair: Callable[..., Awaitable[Pair]], redis: RedisServer
) -> None:
    """SIGSTOP: after 1.5 x the timeout at most, a cached read fails (-32020) instead."""
    a, _ = await make_pair(timeout=0.3)
    for now in (1.0, 2.0):
        await a.touch("alice", "m1", now=now)
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.3 * 1.5 + 0.1)
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(TIMEOUT):
                await a.touch("alice", "m1", now=3.0)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
