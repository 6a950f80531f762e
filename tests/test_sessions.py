"""The session store and the LLM module's session helpers."""

from __future__ import annotations

import asyncio

from gateway.config import DEFAULT_MODELS
from gateway.context import User, user_var
from gateway.modules.llm import LLMModule
from gateway.providers.router import ModelRouter
from gateway.sessions.memory import MemorySessionStore
from tests.support import gateway_server, raw_client


async def test_touch_creates_once_and_refreshes_last_activity() -> None:
    """The first access creates the session; later ones refresh last_activity only."""
    store = MemorySessionStore()
    first = await store.touch("alice", "offline", now=100.0)
    again = await store.touch("alice", "other-default", now=200.0)
    assert again is first
    assert (again.created_at, again.last_activity, again.current_model) == (100.0, 200.0, "offline")


async def test_the_store_evicts_the_least_recently_active_session_at_its_limit() -> None:
    """At max_sessions, a new user evicts the session idle the longest, never a fresher one."""
    store = MemorySessionStore(max_sessions=2)
    await store.touch("a", "m", now=1)
    await store.touch("b", "m", now=2)
    await store.touch("a", "m", now=3)  # a is now fresher than b
    await store.touch("c", "m", now=4)
    remaining = {s.user_id for s in await store.sessions(limit=10)}
    assert remaining == {"a", "c"}
    assert (await store.stats(now=4)).evicted == 1


async def test_cleanup_removes_only_sessions_idle_past_the_age() -> None:
    """cleanup drops sessions idle since before the cut-off and keeps the rest."""
    store = MemorySessionStore()
    for i, user in enumerate(["old1", "old2", "fresh"]):
        await store.touch(user, "m", now=float(i * 100))
    assert await store.cleanup(older_than=150.0) == 2
    assert [s.user_id for s in await store.sessions(limit=10)] == ["fresh"]


async def test_stats_count_models_and_active_sessions() -> None:
    """stats() aggregates models and sessions active in the last hour."""
    store = MemorySessionStore()
    await store.touch("a", "x", now=0.0)
    await store.set_model("b", "y", now=5000.0)
    stats = await store.stats(now=5000.0)
    assert stats.total == 2
    assert stats.active_last_hour == 1
    assert stats.models == {"x": 1, "y": 1}


async def test_cleanup_old_sessions_uses_the_max_age_in_hours() -> None:
    """The origin's cleanup_old_sessions(max_age_hours) removes idle users' sessions."""
    store = MemorySessionStore()
    module = LLMModule(router=ModelRouter(DEFAULT_MODELS), store=store, default_model="offline")
    await store.touch("idle", "offline", now=0.0)
    token = user_var.set(User("active"))
    try:
        await module.get_user_session()
        assert await module.cleanup_old_sessions(max_age_hours=1) == 1
        assert [s.user_id for s in await store.sessions(limit=10)] == ["active"]
    finally:
        user_var.reset(token)


async def test_periodic_cleanup_runs_in_the_server() -> None:
    """The server runs cleanup_old_sessions on its interval."""
    async with gateway_server(cleanup_interval_seconds=0.05, max_age_hours=0.0) as gw:
        async with raw_client(gw) as client:
            await client.call("chat.getCurrentModel")
        async with asyncio.timeout(5):
            while (await gw.store.stats(0)).total:
                await asyncio.sleep(0.02)


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
