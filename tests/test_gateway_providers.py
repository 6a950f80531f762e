"""Real providers through the whole gateway: the official SDKs inside it, fake upstreams behind.

Each test starts fake OpenAI / Anthropic servers on 127.0.0.1, a gateway whose
models point at them, and talks to the gateway over a real WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.budgets import BudgetLedger
from gateway.config import DEFAULT_MODELS, BudgetRule
from gateway.providers.base import ModelConfig
from gateway.providers.router import ModelRouter
from gateway.server.app import Gateway
from tests.fakes import AnthropicFake, FakeServer, Reply
from tests.fakes.openai_server import OpenAIFake
from tests.support import RawClient, assert_positions, gateway_server, raw_client

FAKES = {"openai": OpenAIFake, "anthropic": AnthropicFake}
TEXT = ["Stream", "ing ", "from ", "the ", "fake"]


@contextlib.asynccontextmanager
async def provider_gateway(
    *fakes: FakeServer, models: tuple[ModelConfig, ...], **overrides: Any
) -> AsyncIterator[Gateway]:
    """A gateway serving ``models`` (plus the offline ones) with the fakes' keys in its env."""
    env: dict[str, str] = {}
    for fake in fakes:
        env.update(fake.env)
    all_models = models + DEFAULT_MODELS
    router = ModelRouter(all_models, env=env)
    gateway_kwargs = {"router": router, **overrides.pop("gateway_kwargs", {})}
    async with gateway_server(
        models=all_models,
        default_model=models[0].name,
        gateway_kwargs=gateway_kwargs,
        **overrides,
    ) as gw:
        yield gw


async def _final(client: RawClient, id_: Any) -> dict[str, Any]:
    while True:
        frame = await client.recv()
        if frame.get("id") == id_ and "method" not in frame:
            return frame


async def _first_delta(client: RawClient, id_: Any) -> None:
    frame = await client.recv()
    assert frame["method"] == "stream.delta" and frame["params"]["id"] == id_


STREAMING_CALLS = [
    ("chat.postChat", {"message": "hi"}),
    ("chat.chatWithHistory", {"message": "hi", "history": [{"role": "user", "content": "a"}]}),
    ("chat.postChatWithHistoryAndUser", {"message": "hi", "history": []}),
    ("chat.postChatWithParams", {"message": "hi", "params": {"temperature": 0.3, "maxTokens": 50}}),
]


@pytest.mark.parametrize("provider", FAKES)
@pytest.mark.parametrize(("method", "params"), STREAMING_CALLS, ids=[c[0] for c in STREAMING_CALLS])
async def test_every_streaming_chat_method_streams_from_the_provider(
    provider: str, method: str, params: dict[str, Any]
) -> None:
    """Each streaming chat method streams the provider's text and reports its usage."""
    async with FAKES[provider](default=Reply(text=TEXT, prompt_tokens=21)) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with raw_client(gw) as client:
                text, deltas, final = await client.stream(method, params)
    assert text == "".join(TEXT)
    assert_positions(deltas)
    result = final["result"]
    assert result["model"] == "up"
    assert result["finishReason"] == "stop"
    assert result["usage"] == {
        "promptTokens": 21,
        "completionTokens": len(TEXT),
        "totalTokens": 21 + len(TEXT),
        "source": "provider",
    }


@pytest.mark.parametrize("provider", FAKES)
async def test_chat_non_streaming_returns_the_providers_whole_text(provider: str) -> None:
    """chatNonStreaming collects the provider's stream into one response."""
    async with FAKES[provider](default=Reply(text=TEXT)) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with raw_client(gw) as client:
                response = await client.call("chat.chatNonStreaming", {"message": "hi"})
    assert response["result"]["text"] == "".join(TEXT)
    assert response["result"]["usage"]["source"] == "provider"


async def test_the_user_identity_and_params_reach_the_upstream_request() -> None:
    """postChatWithHistoryAndUser's system prompt and postChatWithParams' params are sent."""
    async with AnthropicFake() as fake:
        async with provider_gateway(fake, models=(fake.model_config("claude"),)) as gw:
            async with raw_client(gw, token="tok-bob") as client:
                await client.stream("chat.postChatWithHistoryAndUser", ["hi", []])
                first = (await fake.finished(0)).json
                await client.stream(
                    "chat.postChatWithParams",
                    {"message": "hi", "params": {"systemPrompt": "Be brief.", "maxTokens": 7}},
                )
                second = (await fake.finished(1)).json
    assert "user id 'bob'" in json.dumps(first["system"])
    assert "Be brief." in json.dumps(second["system"])
    assert second["max_tokens"] == 7


async def test_usage_is_estimated_when_the_upstream_reports_none() -> None:
    """An OpenAI-compatible server without usage gets tiktoken counts marked as estimates."""
    async with OpenAIFake(default=Reply(text=TEXT, usage=False)) as fake:
        async with provider_gateway(fake, models=(fake.model_config("local"),)) as gw:
            async with raw_client(gw) as client:
                _, _, final = await client.stream("chat.postChat", ["hello world"])
    usage = final["result"]["usage"]
    assert usage["source"] == "estimate"
    assert usage["promptTokens"] > 0 and usage["completionTokens"] > 0


async def test_history_is_trimmed_to_the_context_window_and_reported() -> None:
    """Old turns that do not fit the window are dropped; droppedTurns says how many."""
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 200} for i in range(20)
    ]
    async with OpenAIFake() as fake:
        model = fake.model_config("small", context_window=1500, max_output_tokens=200)
        async with provider_gateway(fake, models=(model,)) as gw:
            async with raw_client(gw) as client:
                _, _, final = await client.stream(
                    "chat.chatWithHistory", {"message": "newest", "history": history}
                )
            sent = (await fake.finished()).json["messages"]
    dropped = final["result"]["droppedTurns"]
    assert dropped > 0
    # system + kept history + the new message
    assert len(sent) == 1 + len(history) - dropped + 1
    assert sent[-1]["content"] == "newest"


FAILURES = [
    (Reply(status=401), -32011, False),
    (Reply(status=429, headers={"retry-after": "7"}), -32012, True),
    (Reply(status=503), -32013, True),
    (Reply(malformed_after=0), -32015, False),
]


@pytest.mark.parametrize("provider", FAKES)
@pytest.mark.parametrize(
    ("reply", "code", "retryable"), FAILURES, ids=["401", "429", "503", "malformed"]
)
async def test_upstream_failures_before_any_text_become_documented_errors(
    provider: str, reply: Reply, code: int, retryable: bool
) -> None:
    """Each upstream failure maps to its stable code with a retryable flag."""
    async with FAKES[provider](default=reply) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with raw_client(gw) as client:
                response = await client.call("chat.postChat", ["hi"])
    error = response["error"]
    assert error["code"] == code, error
    assert error["data"]["retryable"] is retryable
    assert error["data"]["provider"] == provider
    if code == -32012:
        assert error["data"]["retryAfter"] == 7


async def test_a_silent_upstream_times_out_with_its_code() -> None:
    """An upstream that never answers within read_timeout is -32014."""
    async with OpenAIFake(default=Reply(delay=5)) as fake:
        model = fake.model_config("slow", read_timeout=0.3)
        async with provider_gateway(fake, models=(model,)) as gw:
            async with raw_client(gw) as client:
                response = await client.call("chat.postChat", ["hi"])
    assert response["error"]["code"] == -32014


async def test_a_drop_after_text_keeps_the_text_and_says_how_the_stream_ended() -> None:
    """Text already streamed is not lost: the result has finishReason error and the error."""
    async with OpenAIFake(default=Reply(text=TEXT, drop_after=2)) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with raw_client(gw) as client:
                text, _, final = await client.stream("chat.postChat", ["hi"])
    assert text == "".join(TEXT[:2])
    result = final["result"]
    assert result["finishReason"] == "error"
    assert result["error"]["code"] == -32013
    assert result["usage"]["completionTokens"] > 0


async def test_failover_before_the_first_token_uses_the_next_model_and_says_so() -> None:
    """A 503 before any text fails over to the fallback; the result names the model used."""
    async with (
        OpenAIFake(default=Reply(status=503)) as openai,
        AnthropicFake(default=Reply(text=TEXT)) as anthropic,
    ):
        models = (
            openai.model_config("gpt", fallbacks=("claude",)),
            anthropic.model_config("claude"),
        )
        async with provider_gateway(openai, anthropic, models=models) as gw:
            async with raw_client(gw) as client:
                text, _, final = await client.stream("chat.postChat", ["hi"])
    assert text == "".join(TEXT)
    assert final["result"]["model"] == "claude"
    assert len(openai.requests) == 1 and len(anthropic.requests) == 1


async def test_no_failover_after_the_first_token() -> None:
    """Once text has streamed, a failure ends the stream; the fallback is never called."""
    async with (
        OpenAIFake(default=Reply(text=TEXT, drop_after=1)) as openai,
        AnthropicFake() as anthropic,
    ):
        models = (
            openai.model_config("gpt", fallbacks=("claude",)),
            anthropic.model_config("claude"),
        )
        async with provider_gateway(openai, anthropic, models=models) as gw:
            async with raw_client(gw) as client:
                _, _, final = await client.stream("chat.postChat", ["hi"])
    assert final["result"]["finishReason"] == "error"
    assert final["result"]["model"] == "gpt"
    assert anthropic.requests == []


@pytest.mark.parametrize("provider", FAKES)
async def test_rpc_cancel_closes_the_upstream_stream(provider: str) -> None:
    """rpc.cancel ends the request as cancelled and the provider sees the client hang up."""
    slow = Reply(text=["tok "] * 200, interval=0.05)
    async with FAKES[provider](default=slow) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with raw_client(gw) as client:
                await _first_delta(client, await client.request("chat.postChat", ["hi"]))
                await client.send({"jsonrpc": "2.0", "method": "rpc.cancel", "params": {"id": 1}})
                final = await _final(client, 1)
                record = await fake.finished()
    assert final["result"]["finishReason"] == "cancelled"
    assert final["result"]["model"] == "up"
    assert record.disconnected and not record.completed


@pytest.mark.parametrize("provider", FAKES)
async def test_a_client_disconnect_closes_the_upstream_stream(provider: str) -> None:
    """With resume_grace 0, closing the socket mid-stream makes the provider see the hang-up."""
    slow = Reply(text=["tok "] * 200, interval=0.05)
    async with FAKES[provider](default=slow) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),), resume_grace=0) as gw:
            async with raw_client(gw) as client:
                await _first_delta(client, await client.request("chat.postChat", ["hi"]))
            record = await fake.finished()
    assert record.disconnected and not record.completed


async def test_budgets_refuse_then_admit_again_when_the_window_passes() -> None:
    """Over budget is -32007 with retryAfter; once the minute passes the user streams again."""
    now = [1_000_000.0]
    ledger = BudgetLedger([BudgetRule(tokens_per_minute=30)], clock=lambda: now[0])
    async with OpenAIFake(default=Reply(text=TEXT, prompt_tokens=40)) as fake:
        async with provider_gateway(
            fake, models=(fake.model_config("up"),), gateway_kwargs={"budget": ledger}
        ) as gw:
            async with raw_client(gw) as client:
                _, _, first = await client.stream("chat.postChat", ["hi"])
                assert first["result"]["finishReason"] == "stop"
                refused = await client.call("chat.postChat", ["again"])
                stats = (await client.call("chat.getSessionStats"))["result"]
                now[0] += 61
                _, _, again = await client.stream("chat.postChat", ["later"])
    error = refused["error"]
    assert error["code"] == -32007
    assert error["data"]["limit"] == "tokensPerMinute"
    assert 0 < error["data"]["retryAfter"] <= 60
    assert again["result"]["finishReason"] == "stop"
    assert stats["you"]["usage"]["totalTokens"] == 40 + len(TEXT)
    assert stats["you"]["budget"]["tokensLastMinute"] == 40 + len(TEXT)


async def test_prices_give_a_cost_in_the_result_and_the_session() -> None:
    """With prices configured, each result and the session totals carry the cost."""
    async with OpenAIFake(
        default=Reply(text=TEXT, prompt_tokens=1000, completion_tokens=500)
    ) as fake:
        model = fake.model_config("priced", price_input_per_mtok=2.0, price_output_per_mtok=8.0)
        async with provider_gateway(fake, models=(model,)) as gw:
            async with raw_client(gw) as client:
                _, _, final = await client.stream("chat.postChat", ["hi"])
                stats = (await client.call("chat.getSessionStats"))["result"]
    expected = 1000 * 2.0 / 1e6 + 500 * 8.0 / 1e6
    assert final["result"]["cost"] == pytest.approx(expected)
    assert stats["you"]["usage"]["cost"] == pytest.approx(expected)


async def test_a_model_without_its_key_is_listed_unavailable_and_refused() -> None:
    """A model whose key variable is unset is listed as unavailable; setModel to it is -32006."""
    async with OpenAIFake() as fake:
        keyless = ModelConfig(
            name="nokey",
            provider="anthropic",
            model="claude-x",
            api_key_env="GATEWAY_TEST_UNSET_KEY",
        )
        async with provider_gateway(fake, models=(fake.model_config("up"), keyless)) as gw:
            async with raw_client(gw) as client:
                models = (await client.call("chat.listModels"))["result"]
                refused = await client.call("chat.setModel", ["nokey"])
    listed = {m["name"]: m for m in models}
    assert listed["nokey"]["available"] is False
    assert listed["up"]["available"] is True
    assert refused["error"]["code"] == -32006


async def test_no_api_key_reaches_a_client_frame_or_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The provider keys never appear in anything a client receives or the gateway logs."""
    caplog.set_level(logging.DEBUG)
    frames: list[str] = []
    async with OpenAIFake(default=Reply(status=401)) as bad, OpenAIFake() as good:
        models = (bad.model_config("bad"), good.model_config("good"))
        async with provider_gateway(bad, good, models=models) as gw:
            async with raw_client(gw) as client:
                for message in (
                    {"jsonrpc": "2.0", "id": 1, "method": "chat.postChat", "params": ["hi"]},
                    {"jsonrpc": "2.0", "id": 2, "method": "chat.listModels"},
                    {"jsonrpc": "2.0", "id": 3, "method": "chat.getCurrentModel"},
                    {"jsonrpc": "2.0", "id": 4, "method": "chat.setModel", "params": ["good"]},
                    {"jsonrpc": "2.0", "id": 5, "method": "chat.postChat", "params": ["hi"]},
                    {"jsonrpc": "2.0", "id": 6, "method": "chat.getSessionStats"},
                    {"jsonrpc": "2.0", "id": 7, "method": "rpc.discover"},
                ):
                    await client.send(message)
                    while True:
                        raw = await asyncio.wait_for(client.ws.recv(), 10)
                        frames.append(str(raw))
                        if json.loads(raw).get("id") == message["id"]:
                            break
    assert any('"code":-32011' in f for f in frames)
    logged = "\n".join(r.getMessage() + str(r.args) for r in caplog.records)
    for key in (bad.api_key, good.api_key):
        assert not any(key in f for f in frames)
        assert key not in logged
        assert key[-8:] not in logged


# Reasoning

REASONING = ["Weighing ", "the question", "..."]


async def _deltas(client: RawClient, method: str, params: Any) -> tuple[list[Any], Any]:
    """Every delta's params of one streamed call, and its final response."""
    id_ = await client.request(method, params)
    deltas = []
    while True:
        frame = await client.recv()
        if frame.get("method") == "stream.delta" and frame["params"]["id"] == id_:
            deltas.append(frame["params"])
        elif frame.get("id") == id_ and "method" not in frame:
            return deltas, frame


@pytest.mark.parametrize("provider", FAKES)
async def test_chat_with_reasoning_streams_reasoning_deltas_apart_from_the_text(
    provider: str,
) -> None:
    """chatWithReasoning sends reasoning as deltas carrying "reasoning" instead of "text",
    before the answer and never inside it; usage counts it."""
    reply = Reply(reasoning=REASONING, text=TEXT, prompt_tokens=11)
    async with FAKES[provider](default=reply) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with raw_client(gw) as client:
                deltas, final = await _deltas(client, "chat.chatWithReasoning", {"message": "hi"})
    assert_positions(deltas)
    assert all(
        set(d) - {"streamId"} in ({"id", "seq", "text"}, {"id", "seq", "reasoning"}) for d in deltas
    )
    kinds = ["reasoning" if "reasoning" in d else "text" for d in deltas]
    assert kinds == sorted(kinds)  # every reasoning delta comes before the text
    assert "".join(d.get("reasoning", "") for d in deltas) == "".join(REASONING)
    assert "".join(d.get("text", "") for d in deltas) == "".join(TEXT)
    usage = final["result"]["usage"]
    assert usage["completionTokens"] == len(TEXT) + len(REASONING)
    assert usage["source"] == "provider"


@pytest.mark.parametrize("provider", FAKES)
async def test_other_chat_methods_send_no_reasoning_but_count_it(provider: str) -> None:
    """postChat and chatNonStreaming carry only the answer text; the reasoning still counts."""
    async with FAKES[provider](default=Reply(reasoning=REASONING, text=TEXT)) as fake:
        async with provider_gateway(fake, models=(fake.model_config("up"),)) as gw:
            async with raw_client(gw) as client:
                deltas, final = await _deltas(client, "chat.postChat", {"message": "hi"})
                whole = await client.call("chat.chatNonStreaming", {"message": "hi"})
    assert all("reasoning" not in d for d in deltas)
    assert "".join(d["text"] for d in deltas) == "".join(TEXT)
    assert final["result"]["usage"]["completionTokens"] == len(TEXT) + len(REASONING)
    assert whole["result"]["text"] == "".join(TEXT)


async def test_reasoning_is_estimated_into_usage_when_the_upstream_reports_none() -> None:
    """Without provider usage, the estimate counts the reasoning text as output too."""
    thinking = ["a long chain of thought " * 20]
    async with OpenAIFake(default=Reply(reasoning=thinking, text=["ok"], usage=False)) as fake:
        async with provider_gateway(fake, models=(fake.model_config("local"),)) as gw:
            async with raw_client(gw) as client:
                _, with_reasoning = await _deltas(client, "chat.postChat", ["hi"])
                fake.default = Reply(text=["ok"], usage=False)
                _, without = await _deltas(client, "chat.postChat", ["hi"])
    thought = with_reasoning["result"]["usage"]["completionTokens"]
    assert with_reasoning["result"]["usage"]["source"] == "estimate"
    assert thought > without["result"]["usage"]["completionTokens"] + 50


# Upstream connections


@pytest.mark.parametrize("provider", FAKES)
async def test_more_concurrent_answers_than_the_pool_holds_all_complete(provider: str) -> None:
    """Twelve answers at once on a model with max_connections 4 all stream in full: the
    others wait for a free connection instead of failing, and connections are reused."""
    slow = Reply(text=TEXT, interval=0.05)
    async with FAKES[provider](default=slow) as fake:
        model = fake.model_config("up", max_connections=4)
        async with provider_gateway(fake, models=(model,), streams_per_user=16) as gw:
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(raw_client(gw, token=token))
                    for token in ["tok-alice", "tok-bob"] * 6
                ]
                results = await asyncio.gather(
                    *(client.stream("chat.postChat", ["hi"]) for client in clients)
                )
    for text, _, final in results:
        assert text == "".join(TEXT)
        assert final["result"]["finishReason"] == "stop"
    assert len(fake.requests) == 12
    assert fake.connections <= 4  # never more at once, and reused


async def test_a_full_pool_past_its_timeout_is_32016_or_fails_over() -> None:
    """With a model's only connection busy past pool_timeout, a request is error -32016 naming
    the limit; on a model with a fallback it fails over instead."""
    async with OpenAIFake(default=Reply(text=TEXT, hang_after=1)) as fake:
        models = (
            fake.model_config("up", max_connections=1, pool_timeout=0.2),
            fake.model_config(
                "backed", max_connections=1, pool_timeout=0.2, fallbacks=("offline-fast",)
            ),
        )
        async with provider_gateway(fake, models=models) as gw:
            async with raw_client(gw) as alice, raw_client(gw, token="tok-bob") as bob:
                await _first_delta(alice, await alice.request("chat.postChat", ["hi"]))
                refused = await bob.call("chat.postChat", ["hi"])
                assert (await bob.call("chat.setModel", ["backed"]))["result"] is True
                await _first_delta(bob, await bob.request("chat.postChat", ["hi"]))
                assert (await alice.call("chat.setModel", ["backed"]))["result"] is True
                text, _, rescued = await alice.stream("chat.postChat", ["hi"])
    error = refused["error"]
    assert error["code"] == -32016
    assert error["data"] == {
        "retryable": True,
        "provider": "openai",
        "limit": "maxConnections",
        "max": 1,
    }
    assert rescued["result"]["model"] == "offline-fast" and text
    assert len(fake.requests) == 2
