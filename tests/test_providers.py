"""The OpenAI and Anthropic providers, with the real SDKs, against local fakes of both APIs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from gateway.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers.anthropic import OPENING_PLACEHOLDER, AnthropicProvider
from gateway.providers.base import ChatRequest, Chunk, Message, ModelConfig
from gateway.providers.errors import parse_retry_after
from gateway.providers.openai import OpenAIProvider
from gateway.providers.router import fit
from gateway.providers.sse import EventSplitter
from gateway.providers.tokens import count_messages
from tests.fakes import AnthropicFake, FakeServer, OpenAIFake, Reply, collect, shut

Network = OpenAIProvider | AnthropicProvider
"""Either network provider."""

REQUEST = ChatRequest(
    messages=(Message("system", "You are terse."), Message("user", "Say hello.")),
)


@dataclass
class Upstream:
    """A fake API and a provider talking to it."""

    fake: FakeServer
    provider: Network
    kind: str

    def stream(self, request: ChatRequest = REQUEST) -> AsyncIterator[Chunk]:
        return self.provider.stream(request)


def make_provider(
    fake: FakeServer, key: str, **overrides: Any
) -> OpenAIProvider | AnthropicProvider:
    config = fake.model_config(**overrides)
    cls = OpenAIProvider if isinstance(fake, OpenAIFake) else AnthropicProvider
    return cls(config, key)


@pytest.fixture(params=["openai", "anthropic"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    fake_cls = OpenAIFake if request.param == "openai" else AnthropicFake
    async with fake_cls() as fake:
        provider = make_provider(fake, fake.api_key, read_timeout=2.0)
        yield Upstream(fake, provider, request.param)
        async with asyncio.timeout(5):
            await provider.aclose()


async def failure(stream: AsyncIterator[Chunk]) -> tuple[list[Chunk], UpstreamError]:
    """The chunks before the stream failed, and its error."""
    chunks: list[Chunk] = []
    with pytest.raises(UpstreamError) as info:
        async with asyncio.timeout(10):
            async for chunk in stream:
                chunks.append(chunk)
    return chunks, info.value


# Streaming


async def test_streams_a_full_answer_with_provider_usage(upstream: Upstream) -> None:
    """Every text piece arrives in order and the last chunk carries usage and finish reason."""
    upstream.fake.script(Reply(text=["Hel", "lo", " there"], prompt_tokens=21))
    chunks = await collect(upstream.stream())
    # Events that arrive in one read come as one chunk: only the order of the text is fixed.
    assert "".join(c.text for c in chunks[:-1]) == "Hello there"
    assert all(c.text and c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.text == ""
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (21, 3)
    assert last.usage.source == "provider"
    record = await upstream.fake.finished()
    assert record.completed and not record.disconnected


@pytest.mark.parametrize(
    ("fake_cls", "finish"),
    [
        (OpenAIFake, "length"),
        (AnthropicFake, "max_tokens"),
        (AnthropicFake, "model_context_window_exceeded"),
    ],
)
async def test_a_cut_off_answer_finishes_with_length(
    fake_cls: type[FakeServer], finish: str
) -> None:
    """Each provider's word for running out of tokens ends the stream as ``length``."""
    async with fake_cls(default=Reply(finish=finish)) as fake:
        provider = make_provider(fake, fake.api_key)
        chunks = await collect(provider.stream(REQUEST))
        await shut(provider)
    assert chunks[-1].finish_reason == "length"


async def test_openai_request_asks_for_usage_and_limits_the_answer() -> None:
    """The body streams, asks for the usage chunk, and sends max_tokens to a compatible server."""
    async with OpenAIFake() as fake:
        provider = make_provider(fake, fake.api_key, max_output_tokens=300)
        await collect(provider.stream(replace(REQUEST, temperature=0.2)))
        await shut(provider)
    body = fake.requests[0].json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 300
    assert body["temperature"] == 0.2
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
    ]
    assert fake.requests[0].headers["authorization"] == f"Bearer {fake.api_key}"


async def test_openai_itself_gets_max_completion_tokens() -> None:
    """Without a base_url the limit is sent as max_completion_tokens (reasoning models need it)."""
    config = ModelConfig(name="gpt", provider="openai", model="gpt-x", max_output_tokens=99)
    provider = OpenAIProvider(config, "k")
    body = provider.body(REQUEST)
    await shut(provider)
    assert body["max_completion_tokens"] == 99
    assert "max_tokens" not in body


async def test_params_are_defaults_and_extra_params_go_in_the_body(upstream: Upstream) -> None:
    """Config params give temperature and max_tokens defaults; other params pass through."""
    params = {"temperature": 0.7, "max_tokens": 64, "top_p": 0.5}
    provider = make_provider(upstream.fake, upstream.fake.api_key, params=params)
    await collect(provider.stream(REQUEST))
    await collect(provider.stream(replace(REQUEST, temperature=0.1, max_tokens=32)))
    await shut(provider)
    first, second = (r.json for r in upstream.fake.requests)
    assert (first["temperature"], first["max_tokens"], first["top_p"]) == (0.7, 64, 0.5)
    assert (second["temperature"], second["max_tokens"]) == (0.1, 32)


async def test_requested_max_tokens_never_exceeds_the_models_limit(upstream: Upstream) -> None:
    """A request asking for more than max_output_tokens gets the model's limit."""
    provider = make_provider(upstream.fake, upstream.fake.api_key, max_output_tokens=50)
    await collect(provider.stream(replace(REQUEST, max_tokens=10_000)))
    await shut(provider)
    assert upstream.fake.requests[0].json["max_tokens"] == 50


async def test_anthropic_request_maps_system_prompt_and_merges_turns() -> None:
    """System messages become ``system``; consecutive same-role turns are merged."""
    request = ChatRequest(
        messages=(
            Message("system", "Be brief."),
            Message("system", "Use English."),
            Message("user", "One."),
            Message("user", "Two."),
            Message("assistant", "Yes."),
            Message("assistant", "And?"),
            Message("user", "Three."),
        )
    )
    async with AnthropicFake() as fake:
        provider = make_provider(fake, fake.api_key, max_output_tokens=256)
        await collect(provider.stream(request))
        await shut(provider)
    body = fake.requests[0].json
    assert body["system"] == "Be brief.\n\nUse English."
    assert body["messages"] == [
        {"role": "user", "content": "One.\n\nTwo."},
        {"role": "assistant", "content": "Yes.\n\nAnd?"},
        {"role": "user", "content": "Three."},
    ]
    assert body["max_tokens"] == 256
    assert body["stream"] is True
    assert "temperature" not in body


async def test_anthropic_conversation_opening_with_the_assistant_gets_a_user_turn_first() -> None:
    """A history that starts with an assistant greeting is preceded by a placeholder user turn."""
    request = ChatRequest(
        messages=(Message("assistant", "Hi, how can I help?"), Message("user", "Tell a joke."))
    )
    async with AnthropicFake() as fake:
        provider = make_provider(fake, fake.api_key)
        await collect(provider.stream(request))
        await shut(provider)
    body = fake.requests[0].json
    assert "system" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == OPENING_PLACEHOLDER


# Cancellation


async def test_closing_the_stream_early_disconnects_from_the_upstream(upstream: Upstream) -> None:
    """aclose() after the first chunk closes the HTTP response; the fake sees the client leave."""
    upstream.fake.script(Reply(hang_after=1))
    stream = upstream.stream()
    async with asyncio.timeout(5):
        first = await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
    assert first.text == "Hello"
    record = await upstream.fake.finished()
    assert record.disconnected and not record.completed


async def test_cancelling_the_consuming_task_disconnects_from_the_upstream(
    upstream: Upstream,
) -> None:
    """Cancelling the task that reads the stream closes the upstream response."""
    upstream.fake.script(Reply(hang_after=1))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in upstream.stream():
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(5):
        await first.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    record = await upstream.fake.finished()
    assert record.disconnected


# Failures


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, UpstreamAuthError),
        (403, UpstreamAuthError),
        (429, UpstreamRateLimited),
        (500, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (504, UpstreamTimeout),
        (400, UpstreamError),
        (404, UpstreamError),
    ],
)
async def test_status_errors_map_to_gateway_errors(
    upstream: Upstream, status: int, error: type[UpstreamError]
) -> None:
    """Each HTTP error status becomes its gateway error, with the status and provider in data."""
    upstream.fake.script(Reply(status=status))
    chunks, exc = await failure(upstream.stream())
    assert chunks == []
    assert type(exc) is error
    assert exc.data is not None
    assert exc.data["status"] == status
    assert exc.data["provider"] == upstream.kind
    assert exc.data["retryable"] is (status in (429, 500, 503, 504))
    assert "'fake'" in exc.message


async def test_rate_limit_carries_retry_after(upstream: Upstream) -> None:
    """A 429's retry-after header becomes data.retryAfter and is named in the message."""
    upstream.fake.script(Reply(status=429, headers={"retry-after": "7"}))
    _, exc = await failure(upstream.stream())
    assert isinstance(exc, UpstreamRateLimited)
    assert exc.retry_after == 7.0
    assert exc.data is not None and exc.data["retryAfter"] == 7.0
    assert "retry in 7 s" in exc.message


async def test_a_wrong_api_key_is_an_upstream_auth_error(upstream: Upstream) -> None:
    """The fake refuses a key that is not its own, as the real API would."""
    provider = make_provider(upstream.fake, "sk-wrong-key-0123456789")
    _, exc = await failure(provider.stream(REQUEST))
    await shut(provider)
    assert isinstance(exc, UpstreamAuthError)
    assert "operator" in exc.message


async def test_a_silent_upstream_times_out(upstream: Upstream) -> None:
    """No response head within read_timeout is an UpstreamTimeout, and the request is abandoned."""
    upstream.fake.script(Reply(delay=30))
    provider = make_provider(upstream.fake, upstream.fake.api_key, read_timeout=0.3)
    _, exc = await failure(provider.stream(REQUEST))
    await shut(provider)
    assert isinstance(exc, UpstreamTimeout)
    assert exc.data is not None and exc.data["retryable"] is True
    assert (await upstream.fake.finished()).disconnected


async def test_silence_mid_stream_times_out(upstream: Upstream) -> None:
    """A stream that stops sending for longer than read_timeout fails with UpstreamTimeout."""
    upstream.fake.script(Reply(hang_after=1))
    provider = make_provider(upstream.fake, upstream.fake.api_key, read_timeout=0.3)
    chunks, exc = await failure(provider.stream(REQUEST))
    await shut(provider)
    assert [c.text for c in chunks] == ["Hello"]
    assert isinstance(exc, UpstreamTimeout)


async def test_an_unreachable_upstream_is_unavailable(upstream: Upstream) -> None:
    """A refused connection is UpstreamUnavailable (retryable)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}{upstream.fake.base_path}"
    provider = make_provider(upstream.fake, upstream.fake.api_key, base_url=base_url)
    _, exc = await failure(provider.stream(REQUEST))
    await shut(provider)
    assert isinstance(exc, UpstreamUnavailable)
    assert exc.data is not None and exc.data["retryable"] is True


async def test_a_connection_dropped_mid_stream_is_unavailable(upstream: Upstream) -> None:
    """An aborted connection after some text is UpstreamUnavailable, after that text."""
    upstream.fake.script(Reply(text=["a", "b", "c"], drop_after=2))
    chunks, exc = await failure(upstream.stream())
    assert "".join(c.text for c in chunks) == "ab"
    assert isinstance(exc, UpstreamUnavailable)


async def test_a_malformed_event_is_a_protocol_error(upstream: Upstream) -> None:
    """Data that is not JSON is UpstreamProtocolError (not retryable)."""
    upstream.fake.script(Reply(malformed_after=1))
    chunks, exc = await failure(upstream.stream())
    assert [c.text for c in chunks] == ["Hello"]
    assert isinstance(exc, UpstreamProtocolError)
    assert exc.data is not None and exc.data["retryable"] is False


async def test_an_error_event_inside_the_stream_is_mapped_by_its_type(upstream: Upstream) -> None:
    """An in-stream overload/server error is UpstreamUnavailable; its type is in the message."""
    kind = "server_error" if upstream.kind == "openai" else "overloaded_error"
    upstream.fake.script(Reply(stream_error=kind))
    chunks, exc = await failure(upstream.stream())
    assert "".join(c.text for c in chunks) == "Hello, world!"
    assert isinstance(exc, UpstreamUnavailable)
    assert kind in exc.message


async def test_a_stream_ending_without_its_end_marker_is_unavailable(upstream: Upstream) -> None:
    """A body that ends cleanly but before [DONE]/message_stop is a truncated answer."""
    upstream.fake.script(Reply(truncate=True))
    chunks, exc = await failure(upstream.stream())
    assert "".join(c.text for c in chunks) == "Hello, world!"
    assert isinstance(exc, UpstreamUnavailable)
    assert "before the answer was complete" in exc.message


# Secrets


@pytest.mark.parametrize("fake_cls", [OpenAIFake, AnthropicFake])
async def test_the_api_key_appears_in_no_log_line_or_error_message(
    fake_cls: type[FakeServer], caplog: pytest.LogCaptureFixture
) -> None:
    """Across every failure, neither log records (at DEBUG) nor error messages hold the key."""
    key = "plainsecretvalue0123456789"  # Not key-shaped: only the provider's own scrub can hide it.
    caplog.set_level(logging.DEBUG)
    errors: list[UpstreamError] = []
    async with fake_cls(api_key=key) as fake:
        provider = make_provider(fake, key, read_timeout=0.3)
        fake.script(
            Reply(status=400, message=f"Invalid request with key {key}"),
            Reply(status=401, message=f"Incorrect API key provided: {key}"),
            Reply(status=429, message=f"Slow down, {key}"),
            Reply(status=500, message=key),
            Reply(delay=30),
            Reply(drop_after=1),
            Reply(malformed_after=0),
        )
        for _ in range(7):
            errors.append((await failure(provider.stream(REQUEST)))[1])
        wrong = make_provider(fake, "sk-live-0123456789abcdef")
        errors.append((await failure(wrong.stream(REQUEST)))[1])
        await shut(provider, wrong)
    assert len(errors) == 8
    assert "[redacted]" in errors[0].message
    for exc in errors:
        assert key not in exc.message and key not in str(exc.data)
        assert "sk-live" not in exc.message
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert key not in text, record.name


def test_retry_after_accepts_seconds_milliseconds_and_http_dates() -> None:
    """retry-after-ms wins; retry-after may be seconds or an HTTP date; junk is None."""
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after": "1.5", "retry-after-ms": "250"}) == 0.25
    date = "Wed, 21 Oct 2015 07:28:30 GMT"
    assert parse_retry_after({"retry-after": date}, now=1445412500.0) == 10.0
    assert parse_retry_after({"retry-after": date}, now=1445412600.0) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# Connections


async def test_connections_are_reused_and_a_cancelled_answer_closes_its_own(
    upstream: Upstream,
) -> None:
    """Answers read to their end share one kept-alive connection; an answer closed early hangs
    up its connection (the upstream stops), and the next request opens a fresh one."""
    fake = upstream.fake
    for _ in range(3):
        chunks = await collect(upstream.stream())
        assert "".join(c.text for c in chunks) == "Hello, world!"
    assert [r.connection for r in fake.requests] == [1, 1, 1]
    fake.script(Reply(hang_after=1))
    stream = upstream.stream()
    async with asyncio.timeout(5):
        assert (await anext(stream)).text == "Hello"
        await stream.aclose()  # type: ignore[attr-defined]
    cancelled = await fake.finished()
    assert cancelled.connection == 1 and cancelled.disconnected and not cancelled.completed
    chunks = await collect(upstream.stream())
    assert "".join(c.text for c in chunks) == "Hello, world!"
    assert fake.requests[-1].connection == 2
    assert fake.connections == 2


async def test_more_concurrent_answers_than_connections_wait_for_one(upstream: Upstream) -> None:
    """With max_connections 2, six concurrent answers all complete, two at a time at most."""
    provider = make_provider(upstream.fake, upstream.fake.api_key, max_connections=2)
    upstream.fake.default = Reply(text=["a", "b", "c"], interval=0.05)
    answers = await asyncio.wait_for(
        asyncio.gather(*(collect(provider.stream(REQUEST)) for _ in range(6))), 20
    )
    await shut(provider)
    assert ["".join(c.text for c in chunks) for chunks in answers] == ["abc"] * 6
    assert len(upstream.fake.requests) == 6
    assert upstream.fake.connections <= 2  # never more at once, and reused


async def test_waiting_longer_than_pool_timeout_is_its_own_error(upstream: Upstream) -> None:
    """When every connection stays busy past pool_timeout, the request fails with
    UpstreamPoolTimeout (-32016, retryable) without reaching the upstream; the slot comes back
    once the busy answer ends."""
    fake = upstream.fake
    provider = make_provider(fake, fake.api_key, max_connections=1, pool_timeout=0.2)
    fake.script(Reply(hang_after=1))
    busy = provider.stream(REQUEST)
    async with asyncio.timeout(5):
        await anext(busy)
    _, exc = await failure(provider.stream(REQUEST))
    assert isinstance(exc, UpstreamPoolTimeout)
    assert exc.code == -32016
    assert exc.data == {
        "retryable": True,
        "provider": upstream.kind,
        "limit": "maxConnections",
        "max": 1,
    }
    assert len(fake.requests) == 1
    async with asyncio.timeout(5):
        await busy.aclose()  # type: ignore[attr-defined]
    chunks = await collect(provider.stream(REQUEST))
    await shut(provider)
    assert "".join(c.text for c in chunks) == "Hello, world!"


# Reasoning


async def test_reasoning_arrives_in_chunks_of_its_own(upstream: Upstream) -> None:
    """reasoning_content / thinking_delta become reasoning chunks, never text, before the
    answer; the provider's usage counts them as output."""
    thoughts = ["The user", " greets me;", " answer briefly."]
    upstream.fake.script(Reply(reasoning=thoughts, text=["Hi", "!"], prompt_tokens=9))
    chunks = await collect(upstream.stream())
    body = chunks[:-1]
    assert all(bool(c.text) != bool(c.reasoning) for c in body)
    assert "".join(c.reasoning for c in body) == "The user greets me; answer briefly."
    assert "".join(c.text for c in body) == "Hi!"
    first_text = next(i for i, c in enumerate(body) if c.text)
    assert all(c.reasoning for c in body[:first_text])
    assert not any(c.reasoning for c in body[first_text:])
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (9, 5)


@pytest.mark.parametrize("fake_cls", [OpenAIFake, AnthropicFake])
async def test_reasoning_and_text_in_one_read_keep_their_order(
    fake_cls: type[FakeServer],
) -> None:
    """Events that arrive together still come out as separate chunks per kind, in order."""
    async with fake_cls(default=Reply(reasoning=["think"], text=["say"])) as fake:
        provider = make_provider(fake, fake.api_key)
        # The whole answer is written before the provider reads: one read holds every event.
        fake.default.delay = 0.0
        chunks = await collect(provider.stream(REQUEST))
        await shut(provider)
    body = [(c.reasoning, c.text) for c in chunks[:-1]]
    assert body == [("think", ""), ("", "say")]


# Event splitting


def test_events_are_split_across_reads_with_names_comments_and_crlf() -> None:
    """An event cut between reads comes out whole once complete; names, multi-line data,
    comment lines and CRLF line ends are handled; the bytes of any split point work alike."""
    wire = (
        b": keep-alive\n\n"
        b'data: {"a": 1}\n\n'
        b'event: message_stop\r\ndata: {"type": "message_stop"}\r\n\r\n'
        b"data: line one\ndata: line two\n\n"
        b"id: 7\nretry: 10\n\n"
        b"data: [DONE]\n\n"
    )
    expected = [
        (b"", b'{"a": 1}'),
        (b"message_stop", b'{"type": "message_stop"}'),
        (b"", b"line one\nline two"),
        (b"", b"[DONE]"),
    ]
    for cut in range(len(wire) + 1):
        splitter = EventSplitter()
        assert splitter.feed(wire[:cut]) + splitter.feed(wire[cut:]) == expected, cut


# Fitting the window


@pytest.mark.parametrize("text", ["plain ASCII words", "héllo wörld, 日本語のテキスト 🙂"])
def test_a_conversation_is_kept_whole_exactly_when_its_counted_tokens_fit(text: str) -> None:
    """fit skips counting when the prompt's bytes fit (a token is at least one byte); the
    answer is the same as counting: whole up to the last window its tokens fit, trimmed below."""
    messages = (
        Message("system", "Be brief."),
        Message("user", text),
        Message("assistant", text * 3),
        Message("user", text),
    )
    tokens = count_messages(messages)
    size = 3 + sum(4 + len(m.role) + len(m.content.encode()) for m in messages)
    assert size > tokens
    for window in range(tokens + 95, size + 105):
        config = ModelConfig(
            name="m", provider="offline", model="m", context_window=window, max_output_tokens=100
        )
        trimmed, dropped = fit(config, ChatRequest(messages=messages))
        assert trimmed.max_tokens == 100
        assert (dropped == 0) is (tokens <= window - 100), window
        if dropped == 0:
            assert trimmed.messages == messages
