"""ModelRouter: availability, failover, trimming, usage and cancellation, over the fake APIs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import DEFAULT_MODELS, load_config
from gateway.errors import (
    LimitExceeded,
    ModelUnavailable,
    UpstreamAuthError,
    UpstreamError,
    UpstreamUnavailable,
)
from gateway.providers.base import ChatRequest, Message, ModelConfig, Usage
from gateway.providers.router import ModelRouter, RoutedStream, fit
from gateway.providers.tokens import count_messages, count_text
from tests.fakes import AnthropicFake, FakeServer, OpenAIFake, Reply, collect, shut

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config.example.toml"
OFFLINE = {m.name: m for m in DEFAULT_MODELS}["offline-fast"]
REQUEST = ChatRequest(messages=(Message("system", "Be kind."), Message("user", "Hello?")))


@pytest.fixture(params=[OpenAIFake, AnthropicFake], ids=["openai", "anthropic"])
async def fake(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    async with request.param() as server:
        yield server


@contextlib.asynccontextmanager
async def routing(fake: FakeServer, **overrides: object) -> AsyncIterator[ModelRouter]:
    """A router with the fake's model "remote" (falling back to offline-fast) and offline-fast."""
    fields = {"fallbacks": ("offline-fast",), "read_timeout": 2.0, **overrides}
    router = ModelRouter([fake.model_config("remote", **fields), OFFLINE], env=fake.env)
    try:
        yield router
    finally:
        async with asyncio.timeout(5):
            await router.aclose()


async def read(stream: RoutedStream) -> str:
    return "".join(chunk.text for chunk in await collect(stream))


# Building and describing


async def test_a_model_without_its_key_is_unavailable_and_logged_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A missing key variable marks the model unavailable, with one warning naming the variable."""
    caplog.set_level(logging.WARNING)
    config = ModelConfig(name="gpt", provider="openai", model="m", api_key_env="MY_OPENAI_KEY")
    keyless = ModelConfig(name="claude", provider="anthropic", model="m")
    router = ModelRouter([config, keyless, OFFLINE], env={})
    assert not router.is_available("gpt") and not router.is_available("claude")
    assert router.is_available("offline-fast")
    assert router.names() == ["gpt", "claude", "offline-fast"]
    assert any("MY_OPENAI_KEY" in r.getMessage() for r in caplog.records)
    assert any("claude" in r.getMessage() for r in caplog.records)
    with pytest.raises(ModelUnavailable, match="API key is not configured") as info:
        router.open("gpt", REQUEST)
    assert "MY_OPENAI_KEY" not in info.value.message
    await shut(router)


async def test_a_self_hosted_openai_compatible_model_needs_no_key() -> None:
    """An openai model with a base_url and no api_key_env is available (e.g. local vLLM)."""
    async with OpenAIFake(api_key="no-key") as fake:
        config = fake.model_config("local", api_key_env=None)
        router = ModelRouter([config], env={})
        assert router.is_available("local")
        assert await read(router.open("local", REQUEST)) == "Hello, world!"
        await shut(router)


async def test_describe_shows_public_facts_only(fake: FakeServer) -> None:
    """describe() names the model but holds no key, key variable or URL."""
    async with routing(fake) as router:
        info = router.describe("remote")
    assert info["name"] == "remote" and info["available"] is True
    text = repr(info)
    for secret in (fake.api_key, fake.key_env, fake.base_url, "base_url", "api_key"):
        assert secret not in text


async def test_the_example_config_loads_and_builds_its_models() -> None:
    """config.example.toml is valid; without keys only the keyless models are available."""
    config = load_config(EXAMPLE_CONFIG, env={})
    router = ModelRouter(config.models, env={})
    available = {name for name in router.names() if router.is_available(name)}
    await shut(router)
    assert available == {"local-llama", "offline", "offline-fast"}
    assert config.default_model == "offline"
    assert {m.provider for m in config.models} == {"openai", "anthropic", "offline"}
    assert config.budgets


async def test_cost_uses_the_models_prices() -> None:
    """Prices per million tokens give the cost; a model without prices has None."""
    priced = replace(OFFLINE, name="priced", price_input_per_mtok=2.0, price_output_per_mtok=8.0)
    router = ModelRouter([priced, OFFLINE], env={})
    usage = Usage(prompt_tokens=1_000, completion_tokens=500)
    assert router.cost("priced", usage) == pytest.approx(0.002 + 0.004)
    assert router.cost("offline-fast", usage) is None
    await shut(router)


# Streaming and usage


async def test_the_answer_streams_with_the_providers_usage(fake: FakeServer) -> None:
    """A routed stream yields the text; the result names the model and the provider's usage."""
    fake.script(Reply(text=["A", "B"], prompt_tokens=5, completion_tokens=2))
    async with routing(fake) as router:
        stream = router.open("remote", REQUEST)
        assert await read(stream) == "AB"
    assert stream.result is not None
    assert stream.result.model == "remote"
    assert stream.result.finish_reason == "stop"
    assert stream.result.usage == Usage(5, 2, "provider")
    assert stream.result.dropped_turns == 0


async def test_usage_is_estimated_when_the_provider_reports_none() -> None:
    """A compatible server that sends no usage chunk gets a tiktoken estimate."""
    async with OpenAIFake(default=Reply(text=["Hello", " world"], usage=False)) as fake:
        async with routing(fake) as router:
            stream = router.open("remote", REQUEST)
            await read(stream)
    assert stream.result is not None
    usage = stream.result.usage
    assert usage.source == "estimate"
    assert usage.prompt_tokens == count_messages(REQUEST.messages)
    assert usage.completion_tokens == count_text("Hello world")


# Failover


@pytest.mark.parametrize(
    "reply",
    [
        Reply(status=503),
        Reply(status=500),
        Reply(status=429, headers={"retry-after": "3"}),
        Reply(delay=30),
        Reply(drop_after=0),
    ],
    ids=["503", "500", "429", "timeout", "dropped-before-text"],
)
async def test_a_retryable_failure_before_the_first_token_fails_over(
    fake: FakeServer, reply: Reply, caplog: pytest.LogCaptureFixture
) -> None:
    """The fallback answers and the result names it; one warning says why."""
    caplog.set_level(logging.WARNING)
    fake.script(reply)
    async with routing(fake, read_timeout=0.3) as router:
        stream = router.open("remote", REQUEST)
        text = await read(stream)
    assert text and stream.result is not None
    assert stream.result.model == "offline-fast"
    assert "offline-fast" in text  # The offline model names itself.
    assert any("failing over to offline-fast" in r.getMessage() for r in caplog.records)


async def test_an_unreachable_model_fails_over() -> None:
    """A refused connection fails over too."""
    async with OpenAIFake() as fake:
        pass  # Closed: its port now refuses connections.
    router = ModelRouter(
        [fake.model_config("remote", fallbacks=("offline-fast",)), OFFLINE], env=fake.env
    )
    stream = router.open("remote", REQUEST)
    await read(stream)
    await shut(router)
    assert stream.result is not None and stream.result.model == "offline-fast"


async def test_no_failover_after_the_first_token(fake: FakeServer) -> None:
    """Once text has streamed, a failure is raised and the fallback is never asked."""
    fake.script(Reply(text=["par", "tial", "!"], drop_after=2))
    received: list[str] = []
    async with routing(fake) as router:
        stream = router.open("remote", REQUEST)
        with pytest.raises(UpstreamUnavailable):
            async with asyncio.timeout(5):
                async for chunk in stream:
                    received.append(chunk.text)
    assert "".join(received) == "partial"
    assert stream.result is None
    assert stream.model == "remote"
    partial = stream.partial_usage()
    assert partial.source == "estimate"
    assert partial.completion_tokens == count_text("partial")


async def test_an_auth_failure_does_not_fail_over(fake: FakeServer) -> None:
    """A rejected key is not retryable: the error reaches the caller (an operator must act)."""
    fake.script(Reply(status=401))
    async with routing(fake) as router:
        with pytest.raises(UpstreamAuthError):
            await read(router.open("remote", REQUEST))


async def test_failover_tries_fallbacks_in_order_and_skips_unavailable_ones() -> None:
    """An unavailable fallback is skipped; a failing one is passed; the next available answers."""
    async with OpenAIFake(default=Reply(status=503)) as first, AnthropicFake() as second:
        models = [
            first.model_config("a", fallbacks=("no-key", "b", "c")),
            ModelConfig(name="no-key", provider="openai", model="m", api_key_env="UNSET_KEY"),
            first.model_config("b"),
            second.model_config("c"),
        ]
        router = ModelRouter(models, env={**first.env, **second.env})
        assert router.candidates("a") == ["a", "b", "c"]
        stream = router.open("a", REQUEST)
        assert await read(stream) == "Hello, world!"
        await shut(router)
    assert stream.result is not None and stream.result.model == "c"
    assert len(first.requests) == 2 and len(second.requests) == 1


async def test_when_every_model_fails_the_last_error_is_raised() -> None:
    """With all candidates failing before any text, the caller gets the last failure."""
    async with (
        OpenAIFake(default=Reply(status=503)) as a,
        AnthropicFake(default=Reply(status=429)) as b,
    ):
        models = [a.model_config("a", fallbacks=("b",)), b.model_config("b")]
        router = ModelRouter(models, env={**a.env, **b.env})
        with pytest.raises(UpstreamError) as info:
            await read(router.open("a", REQUEST))
        await shut(router)
    assert info.value.data is not None and info.value.data["provider"] == "anthropic"
    assert info.value.data["status"] == 429


# Cancellation


async def test_aclose_of_a_routed_stream_closes_the_upstream(fake: FakeServer) -> None:
    """Closing the routed stream after the first text disconnects from the provider at once."""
    fake.script(Reply(hang_after=1))
    async with routing(fake) as router:
        stream = router.open("remote", REQUEST)
        async with asyncio.timeout(5):
            assert (await anext(stream)).text == "Hello"
            await stream.aclose()
        record = await fake.finished()
    assert record.disconnected
    assert stream.result is None
    assert stream.partial_usage().completion_tokens == count_text("Hello")


async def test_leaving_async_with_closes_the_upstream(fake: FakeServer) -> None:
    """``async with stream`` closes it on exit, like aclose()."""
    fake.script(Reply(hang_after=1))
    async with routing(fake) as router:
        async with asyncio.timeout(5), router.open("remote", REQUEST) as stream:
            async for _ in stream:
                break
        record = await fake.finished()
    assert record.disconnected


async def test_cancelling_the_reading_task_closes_the_upstream(fake: FakeServer) -> None:
    """Cancelling the task iterating a routed stream disconnects from the provider."""
    fake.script(Reply(hang_after=2))
    async with routing(fake) as router:
        stream = router.open("remote", REQUEST)
        second = asyncio.Event()
        seen: list[str] = []

        async def consume() -> None:
            async for chunk in stream:
                seen.append(chunk.text)
                if "".join(seen) == "Hello, world":
                    second.set()

        task = asyncio.create_task(consume())
        async with asyncio.timeout(5):
            await second.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        record = await fake.finished()
    assert record.disconnected
    assert "".join(seen) == "Hello, world"


async def test_cancelling_before_the_first_token_closes_the_upstream(fake: FakeServer) -> None:
    """A cancel while the model is still thinking (no response head yet) hangs up at once."""
    fake.script(Reply(delay=30))
    async with routing(fake, read_timeout=60.0) as router:
        stream = router.open("remote", REQUEST)
        task = asyncio.create_task(read(stream))
        await fake.received()
        task.cancel()
        async with asyncio.timeout(5):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        record = await fake.finished()
    assert record.disconnected
    assert stream.result is None


# Trimming


def history(turns: int) -> tuple[Message, ...]:
    """A system prompt and ``turns`` question/answer pairs, then a final question."""
    messages = [Message("system", "You answer questions about numbers.")]
    for i in range(turns):
        messages.append(Message("user", f"What is {i} times {i}? Explain it in a sentence."))
        messages.append(Message("assistant", f"{i} times {i} is {i * i}, found by multiplying."))
    messages.append(Message("user", "And what is 100 times 100?"))
    return tuple(messages)


def test_a_conversation_that_fits_is_left_whole() -> None:
    """Nothing is dropped when the prompt and the answer fit the window."""
    config = replace(OFFLINE, context_window=8192, max_output_tokens=512)
    request = ChatRequest(messages=history(5))
    trimmed, dropped = fit(config, request)
    assert dropped == 0
    assert trimmed.messages == request.messages
    assert trimmed.max_tokens == 512


def test_trimming_keeps_the_system_prompt_and_the_newest_turns() -> None:
    """The oldest turns go first; system messages and the latest user message always stay."""
    messages = history(20)
    config = replace(OFFLINE, context_window=300, max_output_tokens=100)
    trimmed, dropped = fit(config, ChatRequest(messages=messages))
    kept = trimmed.messages
    assert dropped > 0 and len(kept) == len(messages) - dropped
    assert kept[0] == messages[0]
    assert kept[-1] == messages[-1]
    start = len(messages) - len(kept) + 1
    assert kept[1:] == messages[start:]  # A contiguous newest suffix...
    assert kept[1].role == "user"  # ...that opens with a question, not an orphaned answer.
    assert count_messages(kept) <= 300 - 100
    with_previous_turn = (messages[0], *messages[start - 2 :])
    assert count_messages(with_previous_turn) > 300 - 100  # Nothing more would have fit.


def test_the_answer_limit_of_the_request_counts_against_the_window() -> None:
    """A smaller max_tokens leaves room for more history."""
    config = replace(OFFLINE, context_window=400, max_output_tokens=300)
    request = ChatRequest(messages=history(20))
    _, dropped_default = fit(config, request)
    _, dropped_small = fit(config, replace(request, max_tokens=50))
    assert dropped_small < dropped_default


def test_a_message_too_long_for_the_window_is_limit_exceeded() -> None:
    """When even the system prompt and latest message do not fit, the error says so."""
    config = replace(OFFLINE, context_window=200, max_output_tokens=100)
    request = ChatRequest(messages=(Message("user", "word " * 500),))
    with pytest.raises(LimitExceeded) as info:
        fit(config, request)
    assert info.value.data == {"limit": "contextWindow"}
    assert "'offline-fast'" in info.value.message


async def test_the_provider_receives_the_trimmed_history(fake: FakeServer) -> None:
    """The fake sees the system prompt and the newest turns; the result counts the dropped ones."""
    messages = history(20)
    async with routing(fake, context_window=300, max_output_tokens=100) as router:
        stream = router.open("remote", ChatRequest(messages=messages))
        await read(stream)
    assert stream.result is not None
    sent = fake.requests[0].json
    turns = sent["messages"]
    assert 0 < stream.result.dropped_turns < len(messages)
    assert turns[-1]["content"] == messages[-1].content
    if isinstance(fake, AnthropicFake):
        assert sent["system"] == messages[0].content
        assert len(turns) == len(messages) - 1 - stream.result.dropped_turns
    else:
        assert turns[0] == {"role": "system", "content": messages[0].content}
        assert len(turns) == len(messages) - stream.result.dropped_turns


async def test_a_fallback_gets_its_own_trimming(fake: FakeServer) -> None:
    """A fallback with a smaller window trims more, and the result reports its count."""
    small = replace(OFFLINE, context_window=300, max_output_tokens=100)
    fake.script(Reply(status=503))
    router = ModelRouter(
        [fake.model_config("remote", fallbacks=("offline-fast",)), small], env=fake.env
    )
    stream = router.open("remote", ChatRequest(messages=history(20)))
    await read(stream)
    await shut(router)
    assert stream.result is not None
    assert stream.result.model == "offline-fast"
    assert stream.result.dropped_turns > 0
