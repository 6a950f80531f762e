"""conversation.* over real sockets, on SQLite and on a PostgreSQL the tests start."""

from __future__ import annotations

import asyncio
import json

from tests.conversation_support import Backend, call_ok, gateway_on, send
from tests.support import raw_client

KEYS = {"tok-alice": "alice", "tok-bob": "bob"}


async def test_the_method_set_creates_lists_renames_pins_archives_forks_exports_and_deletes(
    backend: Backend,
) -> None:
    """Every non-streaming method does what protocol.md says, on both databases."""
    async with gateway_on(backend, default_model="offline-fast") as gw, raw_client(gw) as c:
        made = await call_ok(
            c,
            "conversation.create",
            {"systemPrompt": "Speak like a pirate.", "params": {"temperature": 0.5}},
        )
        assert made["title"] == "New conversation" and made["model"] == "offline-fast"
        assert made["systemPrompt"] == "Speak like a pirate." and made["params"] == {
            "temperature": 0.5
        }
        cid = made["id"]
        text, result = await send(
            c, "conversation.send", {"conversationId": cid, "message": "How do tides work?"}
        )
        assert 'My instructions: "Speak like a pirate."' in text
        assert result["title"] == "How do tides work"
        others = [await call_ok(c, "conversation.create", {"title": f"n{i}"}) for i in range(4)]
        page1 = await call_ok(c, "conversation.list", {"limit": 2})
        page2 = await call_ok(c, "conversation.list", {"limit": 2, "cursor": page1["nextCursor"]})
        page3 = await call_ok(c, "conversation.list", {"limit": 2, "cursor": page2["nextCursor"]})
        listed = [x["id"] for p in (page1, page2, page3) for x in p["items"]]
        assert listed == [o["id"] for o in reversed(others)] + [cid]
        assert page3["nextCursor"] is None

        await call_ok(c, "conversation.pin", {"conversationId": cid, "pinned": True})
        first = await call_ok(c, "conversation.list", {})
        assert first["items"][0]["id"] == cid and first["items"][0]["pinned"]
        found = await call_ok(c, "conversation.list", {"query": "TIDES"})
        assert [x["id"] for x in found["items"]] == [cid]
        by_text = await call_ok(c, "conversation.list", {"query": "pirate"})
        assert [x["id"] for x in by_text["items"]] == [cid]  # the answer's text matches too

        renamed = await call_ok(c, "conversation.rename", {"conversationId": cid, "title": "Tides"})
        assert renamed["title"] == "Tides"
        updated = await call_ok(
            c,
            "conversation.update",
            {"conversationId": cid, "systemPrompt": "", "params": {"maxTokens": 5}},
        )
        assert updated["systemPrompt"] is None and updated["params"] == {"maxTokens": 5}
        text, result = await send(
            c, "conversation.send", {"conversationId": cid, "message": "more"}
        )
        assert result["finishReason"] == "length" and len(text.split()) == 5

        got = await call_ok(c, "conversation.get", {"conversationId": cid})
        assert [m["role"] for m in got["messages"]] == ["user", "assistant"] * 2
        assert got["messages"][1]["usage"]["completionTokens"] > 0
        forked = await call_ok(
            c, "conversation.fork", {"conversationId": cid, "messageId": got["messages"][1]["id"]}
        )
        fork = await call_ok(c, "conversation.get", {"conversationId": forked["id"]})
        assert [m["content"] for m in fork["messages"]] == [
            m["content"] for m in got["messages"][:2]
        ]
        md = await call_ok(c, "conversation.export", {"conversationId": cid, "format": "markdown"})
        assert md["filename"] == "tides.md" and "## You\n\nHow do tides work?" in md["content"]
        js = await call_ok(c, "conversation.export", {"conversationId": cid, "format": "json"})
        assert len(json.loads(js["content"])["messages"]) == 4

        await call_ok(c, "conversation.archive", {"conversationId": cid, "archived": True})
        assert cid not in [x["id"] for x in (await call_ok(c, "conversation.list", {}))["items"]]
        archived = await call_ok(c, "conversation.list", {"archived": True})
        assert [x["id"] for x in archived["items"]] == [cid]
        assert (await call_ok(c, "conversation.get", {"conversationId": cid}))["messages"]

        assert await call_ok(c, "conversation.delete", {"conversationId": cid}) == {"deleted": True}
        gone = await c.call("conversation.get", {"conversationId": cid})
        assert gone["error"]["code"] == -32030
        bad = await c.call("conversation.list", {"cursor": "not-a-cursor"})
        assert bad["error"]["code"] == -32602
        bad = await c.call("conversation.create", {"params": {"temperature": 9}})
        assert bad["error"]["code"] == -32602
        bad = await c.call("conversation.export", {"conversationId": forked["id"], "format": "pdf"})
        assert bad["error"]["code"] == -32602


async def test_edit_and_regenerate_build_a_tree_and_the_active_branch_is_the_next_history(
    backend: Backend,
) -> None:
    """Edits and regenerations are siblings; the next answer sees only the active branch."""
    async with gateway_on(backend, default_model="offline-fast") as gw, raw_client(gw) as c:
        cid = (await call_ok(c, "conversation.create", {}))["id"]
        _, r1 = await send(c, "conversation.send", {"conversationId": cid, "message": "one"})
        text, r2 = await send(c, "conversation.send", {"conversationId": cid, "message": "two"})
        assert "has 4 messages" in text  # system, one, answer, two

        text, r3 = await send(
            c,
            "conversation.regenerate",
            {"conversationId": cid, "messageId": r2["assistantMessageId"]},
        )
        assert "has 4 messages" in text and r3["userMessageId"] == r2["userMessageId"]
        got = await call_ok(c, "conversation.get", {"conversationId": cid})
        last = got["messages"][-1]
        assert last["id"] == r3["assistantMessageId"]
        assert last["siblingIds"] == [r2["assistantMessageId"], r3["assistantMessageId"]]
        assert last["siblingIndex"] == 1

        text, r4 = await send(
            c,
            "conversation.edit",
            {"conversationId": cid, "messageId": r1["userMessageId"], "message": "uno"},
        )
        assert 'You said: "uno"' in text and "has 2 messages" in text  # the edit has no history
        got = await call_ok(c, "conversation.get", {"conversationId": cid})
        assert got["messages"][0]["content"] == "uno"
        assert got["messages"][0]["siblingIds"] == [r1["userMessageId"], r4["userMessageId"]]
        tree = await call_ok(c, "conversation.get", {"conversationId": cid, "tree": True})
        assert len(tree["messages"]) == 7

        # Back to the first version: its newest answer (the regenerated one) is the leaf.
        back = await call_ok(
            c, "conversation.setActive", {"conversationId": cid, "messageId": r1["userMessageId"]}
        )
        assert back["conversation"]["activeLeafId"] == r3["assistantMessageId"]
        assert [m["content"] for m in back["messages"]][::2] == ["one", "two"]
        text, _ = await send(c, "conversation.send", {"conversationId": cid, "message": "three"})
        assert "has 6 messages" in text

        wrong = await c.call(
            "conversation.regenerate", {"conversationId": cid, "messageId": r1["userMessageId"]}
        )
        assert wrong["error"]["code"] == -32032
        wrong = await c.call(
            "conversation.edit",
            {"conversationId": cid, "messageId": r1["assistantMessageId"], "message": "x"},
        )
        assert wrong["error"]["code"] == -32032


async def test_cancel_and_disconnect_keep_the_partial_answer_as_unfinished(
    backend: Backend,
) -> None:
    """rpc.cancel and (with resume_grace 0) a dropped socket store what was streamed, with
    status unfinished."""
    async with gateway_on(backend, default_model="offline", resume_grace=0) as gw:
        async with raw_client(gw) as c:
            cid = (await call_ok(c, "conversation.create", {}))["id"]
            rid = await c.request("conversation.send", {"conversationId": cid, "message": "hi"})
            seen = ""
            while True:
                frame = await c.recv()
                if frame.get("method") == "stream.delta":
                    seen += frame["params"]["text"]
                    if len(seen.split()) >= 2:
                        await c.send(
                            {"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": rid}}
                        )
                elif frame.get("id") == rid:
                    break
            result = frame["result"]
            assert result["finishReason"] == "cancelled"
            assert result["usage"]["completionTokens"] > 0  # the chat stream's own report
            got = await call_ok(c, "conversation.get", {"conversationId": cid})
            answer = got["messages"][-1]
            assert answer["id"] == result["assistantMessageId"]
            assert answer["status"] == "unfinished" and answer["content"] == seen
            assert answer["finishReason"] == "cancelled" and answer["usage"] == result["usage"]
            cid2 = (await call_ok(c, "conversation.create", {}))["id"]
            await c.request("conversation.send", {"conversationId": cid2, "message": "bye"})
            frame = await c.recv()
            assert frame["method"] == "stream.delta"
        # The socket is closed mid-answer; the answer is kept as far as it went.
        async with raw_client(gw) as c:
            for _ in range(100):
                got = await call_ok(c, "conversation.get", {"conversationId": cid2})
                if got["messages"][-1]["status"] != "streaming":
                    break
                await asyncio.sleep(0.05)
            answer = got["messages"][-1]
            assert answer["status"] == "unfinished"
            assert answer["content"].startswith(frame["params"]["text"])


async def test_a_dropped_socket_leaves_the_answer_running_and_stream_resume_continues_it(
    backend: Backend,
) -> None:
    """Within resume_grace a conversation answer outlives its socket like any stream: another
    connection resumes it by its streamId and the stored answer is the whole text, done."""
    async with gateway_on(backend, default_model="offline") as gw:
        async with raw_client(gw) as c:
            cid = (await call_ok(c, "conversation.create", {}))["id"]
            await c.request("conversation.send", {"conversationId": cid, "message": "bye"})
            first = await c.recv()
            assert first["method"] == "stream.delta"
        stream_id, after = first["params"]["streamId"], first["params"]["seq"]
        text = first["params"]["text"]
        async with raw_client(gw) as c:
            rid = await c.request("stream.resume", {"streamId": stream_id, "after": after})
            while True:
                frame = await c.recv()
                if frame.get("method") == "stream.delta":
                    assert frame["params"].get("streamId", stream_id) == stream_id
                    assert frame["params"]["seq"] > after
                    after = frame["params"]["seq"]
                    text += frame["params"]["text"]
                elif frame.get("id") == rid:
                    break
            assert frame["result"]["finishReason"] == "stop"
            assert frame["result"]["streamId"] == stream_id
            for _ in range(100):
                got = await call_ok(c, "conversation.get", {"conversationId": cid})
                if got["messages"][-1]["status"] != "streaming":
                    break
                await asyncio.sleep(0.05)
            answer = got["messages"][-1]
            assert answer["id"] == frame["result"]["assistantMessageId"]
            assert answer["status"] == "done" and answer["content"] == text
            assert answer["streamId"] == stream_id  # the stored answer names its stream


async def test_limits_refuse_with_conversation_limit_and_busy(backend: Backend) -> None:
    """Conversations per user, messages per conversation, one stream per conversation."""
    async with (
        gateway_on(
            backend,
            default_model="offline",
            conversations={"max_conversations_per_user": 2, "max_messages_per_conversation": 3},
        ) as gw,
        raw_client(gw) as c,
    ):
        a = (await call_ok(c, "conversation.create", {}))["id"]
        await call_ok(c, "conversation.create", {})
        third = await c.call("conversation.create", {})
        assert third["error"]["code"] == -32031
        assert third["error"]["data"] == {"limit": "conversationsPerUser", "max": 2}
        rid = await c.request("conversation.send", {"conversationId": a, "message": "long"})
        busy = await c.call("conversation.send", {"conversationId": a, "message": "again"})
        assert busy["error"]["code"] == -32033
        await c.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": rid}})
        while (await c.recv()).get("id") != rid:
            pass
        full = await c.call("conversation.send", {"conversationId": a, "message": "two more"})
        assert full["error"]["code"] == -32031
        assert full["error"]["data"]["limit"] == "messagesPerConversation"
        huge = await c.call("conversation.send", {"conversationId": a, "message": "x" * 40_000})
        assert huge["error"]["code"] == -32602


async def test_the_origin_journal_keeps_a_current_conversation_and_a_system_prompt(
    backend: Backend,
) -> None:
    """chat.createNewConversation ... archiveTopic keeps messages; restore brings it back."""
    async with gateway_on(backend, default_model="offline-fast") as gw, raw_client(gw) as c:
        await call_ok(c, "chat.setSystemPrompt", {"systemPrompt": "Be terse."})
        made = await call_ok(c, "chat.createNewConversation", {"title": "Groceries"})
        assert made["systemPrompt"] == "Be terse."
        listed = await call_ok(c, "chat.listConversations", {})
        assert listed["currentConversationId"] == made["id"]
        await send(c, "conversation.send", {"conversationId": made["id"], "message": "milk"})
        md = await call_ok(c, "chat.exportConversation", {})
        assert "milk" in md["content"]
        titled = await call_ok(c, "chat.generateConversationTitle", {})
        assert titled["title"] == "Milk"
        await call_ok(c, "chat.archiveTopic", {})
        listed = await call_ok(c, "chat.listConversations", {})
        assert listed["currentConversationId"] is None and listed["conversations"] == []
        await call_ok(c, "chat.restoreArchivedTopic", {"conversationId": made["id"]})
        switched = await call_ok(c, "chat.switchToConversation", {"conversationId": made["id"]})
        assert switched["messages"][0]["content"] == "milk"
        assert (await call_ok(c, "chat.clearCurrentConversation")) == {
            "currentConversationId": None
        }
        none = await c.call("chat.exportConversation", {})
        assert none["error"]["code"] == -32030
