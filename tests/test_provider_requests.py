"""The providers' requests are the ones the SDKs would send: same URL, headers and body.

Each provider prepares its request once from its SDK client (base URL,
default and auth headers, its HTTP client's defaults) and sends it through
its own pooled aiohttp session. These tests send one request through the
SDK's own ``client.post`` and one through the provider, to the same local
fake, and compare what the fake received; and they check the session's
pooling, closing and connect timeout over real sockets.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx2
import orjson
import pytest

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.providers import env_proxy
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import ChatRequest, Message
from gateway.providers.openai import OpenAIProvider
from tests.fakes import AnthropicFake, FakeServer, OpenAIFake, Reply, collect, shut

REQUEST = ChatRequest(messages=(Message("system", "Be brief."), Message("user", "Hi there.")))

# The body's length; and the per-call timeout the Anthropic SDK reports even when a call
# names none (its value is then the literal ``NOT_GIVEN``): the gateway leaves it out.
VARYING = {"content-length", "x-stainless-timeout"}


@pytest.mark.parametrize("fake_cls", [OpenAIFake, AnthropicFake])
async def test_the_request_is_the_one_the_sdk_sends(fake_cls: type[FakeServer]) -> None:
    async with fake_cls() as fake:
        config = fake.model_config(read_timeout=7.5)
        cls = OpenAIProvider if fake_cls is OpenAIFake else AnthropicProvider
        provider = cls(config, fake.api_key)
        body = provider.body(REQUEST)
        # The SDK's own raw-request API, on the very client the provider holds.
        path = "/chat/completions" if fake_cls is OpenAIFake else "/v1/messages"
        response = await provider._client.post(
            path, cast_to=httpx2.Response, content=orjson.dumps(body), stream=True
        )
        await response.aread()
        await response.aclose()
        await collect(provider.stream(REQUEST))
        await shut(provider)
    by_sdk, ours = fake.requests
    assert (ours.method, ours.path) == (by_sdk.method, by_sdk.path)
    assert ours.json == by_sdk.json == body
    expected = {k: v for k, v in by_sdk.headers.items() if k not in VARYING}
    assert {k: v for k, v in ours.headers.items() if k not in VARYING} == expected
    # The SDK's identification and the key are among them.
    assert "x-stainless-package-version" in expected
    assert fake.api_key in " ".join(expected.values())
    assert expected["x-stainless-read-timeout"] == "7.5"


@pytest.mark.parametrize("fake_cls", [OpenAIFake, AnthropicFake])
async def test_an_error_status_quotes_the_providers_message_and_frees_the_connection(
    fake_cls: type[FakeServer],
) -> None:
    """A 4xx body's message reaches the error; the next request reuses the connection."""
    async with fake_cls() as fake:
        fake.script(Reply(status=400, message="messages: too many turns"), Reply())
        cls = OpenAIProvider if fake_cls is OpenAIFake else AnthropicProvider
        provider = cls(fake.model_config(), fake.api_key)
        with pytest.raises(UpstreamError) as info:
            await collect(provider.stream(REQUEST))
        chunks = await collect(provider.stream(REQUEST))
        await shut(provider)
    assert type(info.value) is UpstreamError
    assert "messages: too many turns" in info.value.message
    assert info.value.data is not None and info.value.data["status"] == 400
    assert chunks[-1].finish_reason == "stop"
    assert [r.connection for r in fake.requests] == [1, 1]


@pytest.mark.parametrize("fake_cls", [OpenAIFake, AnthropicFake])
async def test_closing_the_provider_closes_its_pooled_connections(
    fake_cls: type[FakeServer],
) -> None:
    """The model's aiohttp pool keeps the connection open between answers; aclose hangs it
    up, and closing again is harmless."""
    async with fake_cls() as fake:
        cls = OpenAIProvider if fake_cls is OpenAIFake else AnthropicProvider
        provider = cls(fake.model_config(), fake.api_key)
        await shut(provider)  # never used: nothing to close
        provider = cls(fake.model_config(), fake.api_key)
        for _ in range(2):
            chunks = await collect(provider.stream(REQUEST))
            assert chunks[-1].finish_reason == "stop"
        assert fake.open_connections == 1
        await shut(provider)
        await fake.all_closed()
        await shut(provider)
    assert [r.connection for r in fake.requests] == [1, 1]


@pytest.fixture
def unaccepted_port() -> Iterator[int]:
    """A port whose listener never accepts and whose backlog is full: a connect to it hangs
    (the SYN is dropped), as one to a host that does not answer."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("fake_cls", [OpenAIFake, AnthropicFake])
async def test_a_connect_that_hangs_past_connect_timeout_is_an_upstream_timeout(
    fake_cls: type[FakeServer], unaccepted_port: int
) -> None:
    async with fake_cls() as fake:
        base_url = f"http://127.0.0.1:{unaccepted_port}{fake.base_path}"
        config = fake.model_config(base_url=base_url, connect_timeout=0.3)
        cls = OpenAIProvider if fake_cls is OpenAIFake else AnthropicProvider
        provider = cls(config, fake.api_key)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as info:
            await collect(provider.stream(REQUEST))
        waited = time.monotonic() - started
        await shut(provider)
    assert 0.25 < waited < 3
    assert info.value.data is not None and info.value.data["retryable"] is True
    assert "did not answer in time" in info.value.message


def test_a_proxy_named_by_the_environment_is_looked_up_once_per_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the SDK's httpx2 client honoured them: HTTP(S)_PROXY with its credentials, and
    NO_PROXY; the providers read it on a model's first request, not on every one."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert env_proxy("https://api.example.com/v1/messages") == (None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.internal:3128")
    proxy, auth = env_proxy("https://api.example.com/v1/messages")
    assert proxy == "http://proxy.internal:3128"
    assert auth is not None and (auth.login, auth.password) == ("user", "secret")
    assert env_proxy("http://api.example.com/v1") == (None, None)  # no HTTP_PROXY
    monkeypatch.setenv("NO_PROXY", "api.example.com")
    assert env_proxy("https://api.example.com/v1/messages") == (None, None)
