"""The chat module over real sockets: every method, sessions, isolation between users."""

from __future__ import annotations

import asyncio

from gateway.config import DEFAULT_MODELS
from gateway.providers.base import ModelConfig
from tests.support import assert_positions, gateway_server, raw_client

FAST = {"modelName": "offline-fast"}


async def test_post_chat_streams_deltas_then_a_final_result() -> None:
    """postChat answers with positioned stream.delta frames and a final result with usage."""
    async with gateway_server() as gw, raw_client(gw) as client:
        await client.call("chat.setModel", FAST)
        text, deltas, final = await client.stream("chat.postChat", {"message": "hello there"})
    assert 'You said: "hello there"' in text
    assert_positions(deltas)
    result = final["result"]
    assert result["finishReason"] == "stop"
    assert result["model"] == "offline-fast"
    usage = result["usage"]
    assert usage["promptTokens"] > 0 and usage["completionTokens"] > 0
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert usage["source"] == "estimate"


async def test_chat_with_history_sends_the_history_to_the_model() -> None:
    """chatWithHistory passes earlier turns on (the offline model counts the messages)."""
    history = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer"},
    ]
    async with gateway_server() as gw, raw_client(gw) as client:
        await client.call("chat.setModel", FAST)
        text, _, final = await client.stream(
            "chat.chatWithHistory", {"message": "second", "history": history}
        )
    # system + 2 history turns + the new message
    assert "This conversation has 4 messages" in text
    assert final["result"]["finishReason"] == "stop"


async def test_post_chat_with_history_and_user_puts_identity_in_the_system_prompt() -> None:
    """postChatWithHistoryAndUser tells the model who is asking."""
    async with gateway_server() as gw, raw_client(gw, token="tok-bob") as client:
        await client.call("chat.setModel", FAST)
        text, _, _ = await client.stream(
            "chat.postChatWithHistoryAndUser", ["hi", [{"role": "user", "content": "before"}]]
        )
    assert "user id 'bob'" in text


async def test_chat_non_streaming_returns_the_same_text_as_the_stream() -> None:
    """chatNonStreaming answers in one response with the whole text."""
    async with gateway_server() as gw, raw_client(gw) as client:
        await client.call("chat.setModel", FAST)
        streamed, _, _ = await client.stream("chat.postChat", {"message": "same prompt"})
        response = await client.call("chat.chatNonStreaming", {"message": "same prompt"})
    result = response["result"]
    assert result["text"] == streamed
    assert result["finishReason"] == "stop"
    assert result["usage"]["completionTokens"] > 0


async def test_post_chat_with_params_applies_system_prompt_and_max_tokens() -> None:
    """postChatWithParams uses systemPrompt and stops at maxTokens with finishReason length."""
    async with gateway_server() as gw, raw_client(gw) as client:
        await client.call("chat.setModel", FAST)
        text, _, final = await client.stream(
            "chat.postChatWithParams",
            {"message": "hi", "params": {"systemPrompt": "Be a pirate.", "temperature": 0.5}},
        )
        assert 'My instructions: "Be a pirate."' in text
        short, _, final = await client.stream(
            "chat.postChatWithParams", {"message": "hi", "params": {"maxTokens": 3}}
        )
    assert len(short.split()) == 3
    assert final["result"]["finishReason"] == "length"


async def test_post_chat_with_params_rejects_unknown_keys_and_upstream_model_names() -> None:
    """Unknown params keys (including an attempt to name a model) are -32602."""
    async with gateway_server() as gw, raw_client(gw) as client:
        for params in (
            {"model": "gpt-4o"},
            {"temperature": 3},
            {"temperature": "hot"},
            {"maxTokens": 0},
            {"maxTokens": True},
            {"systemPrompt": 5},
        ):
            response = await client.call(
                "chat.postChatWithParams", {"message": "hi", "params": params}
            )
            assert response["error"]["code"] == -32602, params


async def test_history_is_validated() -> None:
    """Malformed history items, roles and oversize history are -32602."""
    async with gateway_server(max_history_messages=3) as gw, raw_client(gw) as client:
        for history in (
            [{"role": "robot", "content": "x"}],
            [{"role": "user", "content": 5}],
            [{"role": "user"}],
            [{"role": "user", "content": "x", "extra": 1}],
            ["just a string"],
            [{"role": "user", "content": "x"}] * 4,
            "not a list",
        ):
            response = await client.call(
                "chat.chatWithHistory", {"message": "hi", "history": history}
            )
            assert response["error"]["code"] == -32602, history


async def test_empty_and_oversized_messages_are_refused() -> None:
    """An empty message or one longer than max_message_chars is -32602."""
    async with gateway_server(max_message_chars=100) as gw, raw_client(gw) as client:
        for message in ("", "   ", "x" * 101):
            response = await client.call("chat.postChat", {"message": message})
            assert response["error"]["code"] == -32602


async def test_set_model_rejects_unknown_names_and_keeps_the_session() -> None:
    """setModel to an unknown name is -32602 and the current model stays."""
    async with gateway_server() as gw, raw_client(gw) as client:
        assert (await client.call("chat.setModel", FAST))["result"] is True
        response = await client.call("chat.setModel", {"modelName": "no-such-model"})
        assert response["error"]["code"] == -32602
        current = await client.call("chat.getCurrentModel")
    assert current["result"]["name"] == "offline-fast"


async def test_list_models_shows_public_facts_only() -> None:
    """listModels lists every model with availability and the current mark, nothing secret."""
    async with gateway_server() as gw, raw_client(gw) as client:
        response = await client.call("chat.listModels")
    models = response["result"]
    assert [m["name"] for m in models] == ["offline", "offline-fast"]
    assert [m["current"] for m in models] == [True, False]
    for model in models:
        assert set(model) == {
            "name",
            "provider",
            "model",
            "contextWindow",
            "maxOutputTokens",
            "available",
            "description",
            "current",
        }


async def test_session_stats_show_own_session_and_detail_only_to_admins() -> None:
    """A normal user sees aggregates and their own session; an admin sees every user."""
    async with gateway_server(admins={"alice"}) as gw:
        async with raw_client(gw, token="tok-bob") as bob:
            await bob.call("chat.setModel", FAST)
            await bob.stream("chat.postChat", {"message": "count me"})
            stats = (await bob.call("chat.getSessionStats"))["result"]
            assert stats["you"]["userId"] == "bob"
            assert stats["you"]["usage"]["requests"] == 1
            assert "users" not in stats
            forbidden = await bob.call("chat.getAllSessions")
            assert forbidden["error"]["code"] == -32003
        async with raw_client(gw, token="tok-alice") as alice:
            stats = (await alice.call("chat.getSessionStats"))["result"]
            everyone = (await alice.call("chat.getAllSessions"))["result"]
    assert stats["totalSessions"] == 2
    assert {u["userId"] for u in stats["users"]} == {"alice", "bob"}
    assert {u["userId"] for u in everyone} == {"alice", "bob"}


async def test_two_connections_of_one_user_share_the_model_choice() -> None:
    """Sessions are per user, not per connection."""
    async with gateway_server() as gw:
        async with raw_client(gw) as first, raw_client(gw) as second:
            await first.call("chat.setModel", FAST)
            current = await second.call("chat.getCurrentModel")
            other = await second.call("chat.getCurrentModel")
        async with raw_client(gw, token="tok-bob") as bob:
            bobs = await bob.call("chat.getCurrentModel")
    assert current["result"]["name"] == other["result"]["name"] == "offline-fast"
    assert bobs["result"]["name"] == "offline"


async def test_a_model_removed_from_config_falls_back_to_the_default() -> None:
    """A session naming a model no longer configured uses the default model."""
    async with gateway_server() as gw, raw_client(gw) as client:
        await gw.store.set_model("alice", "retired-model", 0.0)
        current = await client.call("chat.getCurrentModel")
    assert current["result"]["name"] == "offline"


async def test_two_hundred_users_stream_at_once_and_see_only_their_own_model_and_identity() -> None:
    """200 concurrent users, each on a different model, never see each other's session."""
    users = 200
    models = tuple(
        ModelConfig(name=f"m{i}", provider="offline", model="offline-echo") for i in range(users)
    )
    keys = {f"tok-{i}": f"user{i}" for i in range(users)}

    async def one(gw: object, i: int) -> None:
        async with raw_client(gw, token=f"tok-{i}") as client:  # type: ignore[arg-type]
            assert (await client.call("chat.setModel", [f"m{i}"]))["result"] is True
            text, _, final = await client.stream(
                "chat.postChatWithHistoryAndUser", {"message": f"I am {i}", "history": []}
            )
            assert f"I am m{i}." in text
            assert f"user id 'user{i}'" in text
            assert final["result"]["model"] == f"m{i}"
            who = await client.call("auth.whoami")
            assert who["result"]["user"]["id"] == f"user{i}"
            current = await client.call("chat.getCurrentModel")
            assert current["result"]["name"] == f"m{i}"

    async with gateway_server(
        api_keys=keys, models=models + DEFAULT_MODELS, default_model="offline-fast"
    ) as gw:
        async with asyncio.timeout(60):
            await asyncio.gather(*(one(gw, i) for i in range(users)))
        stats = await gw.store.stats(0)
    assert stats.total == users
    assert stats.models == {f"m{i}": 1 for i in range(users)}


async def test_streams_per_user_limit_is_enforced() -> None:
    """A user over streams_per_user gets -32004 streamsPerUser."""
    async with gateway_server(streams_per_user=1) as gw, raw_client(gw) as client:
        await client.send(
            {"jsonrpc": "2.0", "id": 1, "method": "chat.postChat", "params": ["long one"]}
        )
        await client.recv()  # the first delta: the first stream is running
        response = await client.call("chat.postChat", ["second"], id=2)
    assert response["error"]["code"] == -32004
    assert response["error"]["data"]["limit"] == "streamsPerUser"
