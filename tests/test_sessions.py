"""The session stores (memory and Redis, same tests) and the LLM module's session helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.config import DEFAULT_MODELS
from gateway.context import User, user_var
from gateway.modules.llm import LLMModule
from gateway.providers.router import ModelRouter
from gateway.sessions.memory import MemorySessionStore
from gateway.sessions.redis import RedisSessionStore
from gateway.sessions.redislink import RedisLink
from gateway.sessions.store import SessionStore
from tests.redis_support import TEST_REDIS_TIMEOUT, redis_server, redis_url, store_kind, store_url
from tests.support import gateway_server, raw_client

__all__ = ["redis_server", "redis_url", "store_kind", "store_url"]  # fixtures in use

MakeStore = Callable[..., Awaitable[SessionStore]]


@pytest.fixture
async def make_store(store_url: str | None) -> AsyncIterator[MakeStore]:
    """Builds a store of the parametrised kind (Redis: connected to a private, empty server)."""
    links: list[RedisLink] = []

    async def make(**kwargs: Any) -> SessionStore:
        if store_url is None:
            return MemorySessionStore(**kwargs)
        link = RedisLink(store_url, prefix="test:", timeout=TEST_REDIS_TIMEOUT)
        # Exact index order, as in memory (the tests use made-up clocks a second apart).
        store = RedisSessionStore(link, index_every=0, **kwargs)
        async with asyncio.timeout(10):
            await link.connect()
        links.append(link)
        return store

    yield make
    for link in links:
        await link.aclose()


async def test_touch_creates_once_and_refreshes_last_activity(make_store: MakeStore) -> None:
    """The first access creates the session; later ones refresh last_activity only."""
    store = await make_store()
    await store.touch("alice", "offline", now=100.0)
    again = await store.touch("alice", "other-default", now=200.0)
    assert (again.created_at, again.last_activity, again.current_model) == (100.0, 200.0, "offline")
    assert [s.user_id for s in await store.sessions(limit=10)] == ["alice"]


async def test_set_model_is_kept_and_usage_adds_up(make_store: MakeStore) -> None:
    """set_model survives later touches; add_usage accumulates totals and requests."""
    store = await make_store()
    await store.touch("alice", "offline", now=1.0)
    await store.set_model("alice", "offline-fast", now=2.0)
    await store.add_usage("alice", 10, 20, 0.5, now=3.0)
    await store.add_usage("alice", 1, 2, 0.25, now=4.0)
    session = await store.touch("alice", "offline", now=5.0)
    assert session.current_model == "offline-fast"
    assert (session.prompt_tokens, session.completion_tokens, session.requests) == (11, 22, 2)
    assert session.cost == pytest.approx(0.75)
    assert (await store.stats(now=5.0)).models == {"offline-fast": 1}


async def test_the_store_evicts_the_least_recently_active_session_at_its_limit(
    make_store: MakeStore,
) -> None:
    """At max_sessions, a new user evicts the session idle the longest, never a fresher one."""
    store = await make_store(max_sessions=2)
    await store.touch("a", "m", now=1)
    await store.touch("b", "m", now=2)
    await store.touch("a", "m", now=3)  # a is now fresher than b
    await store.touch("c", "m", now=4)
    remaining = {s.user_id for s in await store.sessions(limit=10)}
    assert remaining == {"a", "c"}
    stats = await store.stats(now=4)
    assert (stats.evicted, stats.total, stats.models) == (1, 2, {"m": 2})


async def test_cleanup_removes_only_sessions_idle_past_the_age(make_store: MakeStore) -> None:
    """cleanup drops sessions idle since before the cut-off and keeps the rest."""
    store = await make_store()
    for i, user in enumerate(["old1", "old2", "fresh"]):
        await store.touch(user, "m", now=float(i * 100))
    assert await store.cleanup(older_than=150.0) == 2
    assert [s.user_id for s in await store.sessions(limit=10)] == ["fresh"]
    assert (await store.stats(now=200.0)).models == {"m": 1}


async def test_stats_count_models_and_active_sessions(make_store: MakeStore) -> None:
    """stats() aggregates models and sessions active in the last hour."""
    store = await make_store()
    await store.touch("a", "x", now=0.0)
    await store.set_model("b", "y", now=5000.0)
    stats = await store.stats(now=5000.0)
    assert stats.total == 2
    assert stats.active_last_hour == 1
    assert stats.models == {"x": 1, "y": 1}


async def test_sessions_lists_newest_first_up_to_the_limit(make_store: MakeStore) -> None:
    """sessions(limit) is the most recently active first."""
    store = await make_store()
    for i, user in enumerate(["u1", "u2", "u3"]):
        await store.touch(user, "m", now=float(i))
    assert [s.user_id for s in await store.sessions(limit=2)] == ["u3", "u2"]


async def test_cleanup_old_sessions_uses_the_max_age_in_hours(make_store: MakeStore) -> None:
    """The origin's cleanup_old_sessions(max_age_hours) removes idle users' sessions."""
    store = await make_store()
    module = LLMModule(router=ModelRouter(DEFAULT_MODELS), store=store, default_model="offline")
    await store.touch("idle", "offline", now=0.0)
    token = user_var.set(User("active"))
    try:
        await module.get_user_session()
        assert await module.cleanup_old_sessions(max_age_hours=1) == 1
        assert [s.user_id for s in await store.sessions(limit=10)] == ["active"]
    finally:
        user_var.reset(token)


def _store_options(url: str | None) -> dict[str, Any]:
    """gateway_server options selecting the Redis store at ``url`` (None: memory)."""
    if url is None:
        return {}
    return {"store": "redis", "url": url, "redis_timeout": TEST_REDIS_TIMEOUT}


async def test_periodic_cleanup_runs_in_the_server(store_url: str | None) -> None:
    """The server runs cleanup_old_sessions on its interval."""
    extra = _store_options(store_url)
    async with gateway_server(cleanup_interval_seconds=0.05, max_age_hours=0.0, **extra) as gw:
        async with raw_client(gw) as client:
            await client.call("chat.getCurrentModel")
        async with asyncio.timeout(5):
            while (await gw.store.stats(0)).total:
                await asyncio.sleep(0.02)


async def test_a_model_choice_is_shared_by_the_users_connections(store_url: str | None) -> None:
    """setModel on one socket is the model of the user's other sockets; others keep theirs."""
    extra = _store_options(store_url)
    async with gateway_server(**extra) as gw:
        async with raw_client(gw) as one, raw_client(gw) as two, raw_client(gw, "tok-bob") as bob:
            assert (await one.call("chat.setModel", ["offline-fast"]))["result"] is True
            current = await two.call("chat.getCurrentModel")
            assert current["result"]["name"] == "offline-fast"
            assert (await bob.call("chat.getCurrentModel"))["result"]["name"] == "offline"


async def test_session_helpers_refuse_to_run_without_a_user() -> None:
    """Missing user is a clear error, never someone else's session."""
    module = LLMModule(
        router=ModelRouter(DEFAULT_MODELS), store=MemorySessionStore(), default_model="offline"
    )
    try:
        await module.get_user_session()
    except Exception as exc:
        assert type(exc).__name__ == "Unauthenticated"
    else:
        raise AssertionError("a session without a user")


async def test_redis_keys_carry_the_prefix_a_user_hash_tag_and_a_ttl(redis_url: str) -> None:
    """Every key is under the prefix; a user's keys share {u:<id>}; sessions expire by TTL."""
    link = RedisLink(redis_url, prefix="pfx:", timeout=TEST_REDIS_TIMEOUT)
    store = RedisSessionStore(link, max_age_hours=1.0)
    await link.connect()
    try:
        await store.touch("alice", "offline", now=10.0)
        await store.add_usage("alice", 1, 1, 0.0, now=11.0)
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = sorted(k.decode() for k in await client.keys("*"))
            ttl = await client.ttl("pfx:s:{u:alice}")
        finally:
            await client.aclose()
    finally:
        await link.aclose()
    assert all(k.startswith(("pfx:{", "pfx:s:{")) for k in keys), keys
    assert "pfx:s:{u:alice}" in keys
    assert {k for k in keys if "{u:" not in k} <= {
        "pfx:{idx}:sessions",
        "pfx:{idx}:who",
        "pfx:{idx}:models",
    }
    assert 3600 < ttl <= 3600 + 86_400


async def test_redis_index_writes_are_coalesced_but_last_activity_is_exact(redis_url: str) -> None:
    """Within index_every a touch is one script: lastActivity exact, the index order lags."""
    link = RedisLink(redis_url, timeout=TEST_REDIS_TIMEOUT)
    store = RedisSessionStore(link, index_every=30.0)
    await link.connect()
    try:
        await store.touch("a", "m", now=1.0)
        await store.touch("b", "m", now=2.0)
        again = await store.touch("a", "m", now=3.0)
        order = [s.user_id for s in await store.sessions(limit=10)]
        await store.touch("a", "m", now=40.0)  # Past the window: indexed again.
        later = [s.user_id for s in await store.sessions(limit=10)]
    finally:
        await link.aclose()
    assert again.last_activity == 3.0
    assert order == ["b", "a"]  # a's index score is still 1.0
    assert later == ["a", "b"]


async def test_concurrent_redis_calls_are_pipelined_and_each_gets_its_own_answer(
    redis_url: str,
) -> None:
    """200 concurrent updates (pipelined together) all count; after SCRIPT FLUSH they still do."""
    link = RedisLink(redis_url, timeout=TEST_REDIS_TIMEOUT)
    store = RedisSessionStore(link)
    await link.connect()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await store.touch("alice", "m", now=1.0)
        async with asyncio.timeout(10):
            await asyncio.gather(
                *(store.add_usage("alice", 1, 2, 0.0, now=2.0) for _ in range(100))
            )
            await client.script_flush()  # as after a Redis restart: scripts must be loaded again
            sessions = await asyncio.gather(
                *(store.touch(f"user{i}", "m", now=3.0) for i in range(50)),
                *(store.add_usage("alice", 1, 2, 0.0, now=3.0) for _ in range(100)),
            )
        alice = await store.touch("alice", "m", now=4.0)
    finally:
        await client.aclose()
        await link.aclose()
    assert [s.user_id for s in sessions[:50]] == [f"user{i}" for i in range(50)]
    assert (alice.requests, alice.prompt_tokens, alice.completion_tokens) == (200, 200, 400)
