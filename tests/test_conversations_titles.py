"""Titles: asked of the conversation's model in the background after the first answer, with a
timeout and a fallback; and the store's housekeeping (retention, interrupted answers)."""

from __future__ import annotations

import asyncio
import time

from gateway.config import ConversationsConfig
from gateway.conversations import make_store
from gateway.conversations.store import NewMessage, StoreLimits
from tests.conversation_support import Backend, call_ok
from tests.fakes import Reply
from tests.fakes.openai_server import OpenAIFake
from tests.support import RawClient, raw_client
from tests.test_gateway_providers import provider_gateway


async def _title_when_set(c: RawClient, cid: str) -> str:
    async with asyncio.timeout(10):
        while True:
            got = await call_ok(c, "conversation.get", {"conversationId": cid})
            if got["conversation"]["title"] != "New conversation":
                return str(got["conversation"]["title"])
            await asyncio.sleep(0.05)


async def test_a_model_titles_the_conversation_in_the_background_after_the_first_answer() -> None:
    """The answer returns at once; the title the model wrote lands a moment later."""
    async with OpenAIFake() as fake:
        fake.script(
            Reply(text=["Tides ", "follow the moon."]), Reply(text=['"Tides', ' and the moon"'])
        )
        async with provider_gateway(fake, models=(fake.model_config("gpt"),)) as gw:
            async with raw_client(gw) as c:
                cid = (await call_ok(c, "conversation.create"))["id"]
                _, _, final = await c.stream(
                    "conversation.send", {"conversationId": cid, "message": "why do tides happen"}
                )
                assert final["result"]["title"] == "New conversation"
                assert await _title_when_set(c, cid) == "Tides and the moon"
                second = (await fake.finished(1)).json
    assert "short title" in str(second["messages"][0]["content"])
    assert "why do tides happen" in str(second["messages"][1]["content"])


async def test_a_slow_title_falls_back_to_the_first_words_of_the_question() -> None:
    """Past title_timeout_seconds the question's first words become the title."""
    async with OpenAIFake() as fake:
        fake.script(Reply(text=["An answer."]), Reply(text=["Too late"], delay=5))
        async with provider_gateway(
            fake,
            models=(fake.model_config("gpt"),),
            conversations=ConversationsConfig(title_timeout_seconds=0.2),
        ) as gw:
            async with raw_client(gw) as c:
                cid = (await call_ok(c, "conversation.create"))["id"]
                await c.stream(
                    "conversation.send",
                    {"conversationId": cid, "message": "how do I bake sourdough bread at home"},
                )
                assert await _title_when_set(c, cid) == "How do I bake sourdough bread"


async def test_retention_removes_idle_unpinned_conversations_and_recovery_marks_streams(
    backend: Backend,
) -> None:
    """cleanup() keeps pinned and recent ones; mark_interrupted() honours node and age."""
    store = make_store(
        backend.url,
        sqlite_path=f"{backend.data_dir}/gateway.db" if backend.data_dir else None,
        limits=StoreLimits(),
    )
    await store.start()
    try:
        now = time.time()
        old = await store.create(
            "u", title="old", model="m", system_prompt=None, params={}, now=now - 90 * 86400
        )
        pinned = await store.create(
            "u", title="pinned", model="m", system_prompt=None, params={}, now=now - 90 * 86400
        )
        await store.update("u", pinned.id, now, pinned=True, touch=False)
        fresh = await store.create(
            "u", title="fresh", model="m", system_prompt=None, params={}, now=now
        )
        await store.add_messages("u", old.id, [NewMessage("user", "bye")], now - 90 * 86400)
        assert await store.cleanup(now - 30 * 86400) == 1
        assert await store.get("u", old.id) is None
        assert await store.get("u", pinned.id) is not None

        streaming = [NewMessage("assistant", "", status="streaming")]
        mine = await store.add_messages("u", fresh.id, streaming, now, node="node-a")
        other = await store.add_messages("u", fresh.id, streaming, now, node="node-b")
        stale = await store.add_messages("u", fresh.id, streaming, now - 7200, node="node-c")
        assert mine and other and stale
        assert await store.mark_interrupted(node="node-a", stale_before=now - 3600, now=now) == 2
        statuses = {m.id: m.status for m in (await store.messages("u", fresh.id)) or []}
        assert statuses[mine[0].id] == "interrupted" and statuses[stale[0].id] == "interrupted"
        assert statuses[other[0].id] == "streaming"  # another live node's answer
    finally:
        await store.close()
