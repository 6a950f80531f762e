"""OpenAI chat models, and OpenAI-compatible servers (vLLM, Ollama, llama.cpp) via ``base_url``.

One ``openai.AsyncOpenAI`` client per model, shared by its requests, with
the transport of :mod:`gateway.providers` (``max_retries=0``: the router
fails over instead). Each request is ``chat.completions.create(stream=True,
stream_options={"include_usage": True})``; the usage chunk (empty
``choices``) arrives after the finish reason, so the final :class:`Chunk`
is yielded once the stream has ended.

The answer's length limit goes out as ``max_completion_tokens`` to OpenAI
itself (its reasoning models refuse ``max_tokens``) and as ``max_tokens`` to
a ``base_url`` (what compatible servers understand). ``params`` other than
temperature and max_tokens are added to the request body unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from gateway.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.providers import (
    extra_params,
    http_client,
    output_limit,
    sampling_temperature,
    timeout,
)
from gateway.providers.base import ChatRequest, Chunk, ModelConfig, Usage
from gateway.providers.errors import (
    TRANSPORT,
    Target,
    Upstream,
    ended_early,
    from_error_type,
    from_status,
    make,
    map_exceptions,
)

__all__ = ["OPENAI_BASE_URL", "OpenAIProvider"]

OPENAI_BASE_URL = "https://api.openai.com/v1"

_ERRORS: dict[type[BaseException], Target] = {
    openai.APITimeoutError: UpstreamTimeout,
    openai.APIConnectionError: UpstreamUnavailable,
    openai.APIResponseValidationError: UpstreamProtocolError,
    openai.APIStatusError: from_status,
    openai.APIError: from_error_type,
    **TRANSPORT,
    openai.OpenAIError: UpstreamError,
}


def finish_reason(reason: str) -> str:
    """OpenAI's finish reason in the gateway's terms: ``length`` or ``stop``."""
    return "length" if reason == "length" else "stop"


class OpenAIProvider:
    """Streams chat completions from an OpenAI(-compatible) endpoint."""

    def __init__(self, config: ModelConfig, api_key: str) -> None:
        self.config = config
        self._guard = map_exceptions(_ERRORS, Upstream(config.provider, config.name, (api_key,)))
        self._client = openai.AsyncOpenAI(
            # Compatible servers often need no key, but the SDK insists on one.
            api_key=api_key or "no-key",
            base_url=config.base_url or OPENAI_BASE_URL,
            max_retries=0,
            timeout=timeout(config),
            http_client=http_client(config),
        )
        self._limit_field = "max_tokens" if config.base_url else "max_completion_tokens"

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for ``request``."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": cast(list[ChatCompletionMessageParam], messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            self._limit_field: output_limit(self.config, request),
        }
        temperature = sampling_temperature(self.config, request)
        if temperature is not None:
            body["temperature"] = temperature
        extra = extra_params(self.config)
        if extra:
            body["extra_body"] = extra
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        guard = self._guard
        with guard:
            response = cast(
                "openai.AsyncStream[ChatCompletionChunk]",
                await self._client.chat.completions.create(**self.body(request)),
            )
        usage: Usage | None = None
        finish: str | None = None
        try:
            while True:
                with guard:
                    try:
                        chunk = await anext(response)
                    except StopAsyncIteration:
                        break
                text, reason, reported = self._read(chunk)
                usage = reported or usage
                finish = reason or finish
                if text:
                    yield Chunk(text=text)
        finally:
            # Closing an unfinished response drops the connection: the upstream stops generating.
            with contextlib.suppress(Exception):
                await response.close()
        if finish is None:
            raise ended_early(guard.upstream)
        yield Chunk(usage=usage, finish_reason=finish_reason(finish))

    def _read(self, chunk: ChatCompletionChunk) -> tuple[str, str | None, Usage | None]:
        """Text, finish reason and usage carried by one chunk (of choice 0)."""
        try:
            usage = None
            if chunk.usage is not None:
                usage = Usage(
                    prompt_tokens=int(chunk.usage.prompt_tokens),
                    completion_tokens=int(chunk.usage.completion_tokens),
                )
            text, finish = "", None
            for choice in chunk.choices or ():
                if choice.index != 0:
                    continue
                if choice.delta is not None:
                    text += (choice.delta.content or "") + (choice.delta.refusal or "")
                finish = choice.finish_reason or finish
        except (AttributeError, TypeError, ValueError):
            # The SDK builds chunks without validation: a wrong shape shows up here.
            raise make(UpstreamProtocolError, self._guard.upstream) from None
        return text, finish, usage

    async def aclose(self) -> None:
        await self._client.close()
