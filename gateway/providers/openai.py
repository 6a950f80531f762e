"""OpenAI chat models, and OpenAI-compatible servers (vLLM, Ollama, DeepSeek) via ``base_url``.

One ``openai.AsyncOpenAI`` client per model (``max_retries=0``: the router
fails over instead). The SDK client says what a request looks like (base
URL, auth and identification headers), read once
(:mod:`gateway.providers.request`); each request goes out with the orjson
body through the model's pooled aiohttp session, with the limits and
timeouts of :mod:`gateway.providers`. The gateway reads the response's
event stream itself, decoding each ``data:`` event with orjson into the few
fields it needs. No typed object per chunk: that was over half the CPU of a
streamed chunk.

The request streams with ``stream_options={"include_usage": True}``; the
usage chunk (empty ``choices``) arrives after the finish reason, so the
final :class:`Chunk` is yielded once the stream has ended. ``delta.content``
(and ``delta.refusal``) is answer text; ``delta.reasoning_content`` (DeepSeek,
vLLM) or ``delta.reasoning`` (newer vLLM, OpenRouter) is reasoning, yielded as
separate chunks and never mixed into the text.

The answer's length limit goes out as ``max_completion_tokens`` to OpenAI
itself (its reasoning models refuse ``max_tokens``) and as ``max_tokens`` to
a ``base_url`` (what compatible servers understand). ``params`` other than
temperature and max_tokens are added to the request body unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson

from gateway.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailable,
)
from gateway.providers import (
    Slots,
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
    from_timeout,
    make,
    map_exceptions,
    stream_error,
)
from gateway.providers.request import READ_SIZE, StreamingPost
from gateway.providers.sse import EventSplitter

__all__ = ["OPENAI_BASE_URL", "OpenAIProvider"]

OPENAI_BASE_URL = "https://api.openai.com/v1"
PATH = "/chat/completions"

_ERRORS: dict[type[BaseException], Target] = {
    openai.APITimeoutError: from_timeout,
    openai.APIConnectionError: UpstreamUnavailable,
    openai.APIResponseValidationError: UpstreamProtocolError,
    openai.APIStatusError: from_status,
    openai.APIError: from_error_type,
    **TRANSPORT,
    openai.OpenAIError: UpstreamError,
}

_DONE = b"[DONE]"


def finish_reason(reason: str) -> str:
    """OpenAI's finish reason in the gateway's terms: ``length`` or ``stop``."""
    return "length" if reason == "length" else "stop"


class OpenAIProvider:
    """Streams chat completions from an OpenAI(-compatible) endpoint."""

    def __init__(self, config: ModelConfig, api_key: str) -> None:
        self.config = config
        upstream = Upstream(config.provider, config.name, (api_key,))
        self._guard = map_exceptions(_ERRORS, upstream)
        http = http_client(config, openai.DefaultAioHttpClient)
        self._client = openai.AsyncOpenAI(
            # Compatible servers often need no key, but the SDK insists on one.
            api_key=api_key or "no-key",
            base_url=config.base_url or OPENAI_BASE_URL,
            max_retries=0,
            timeout=timeout(config),
            http_client=http,
        )
        self._post = StreamingPost(self._client, http, PATH, upstream, config)
        self._slots = Slots(config)
        self._limit_field = "max_tokens" if config.base_url else "max_completion_tokens"
        # What every request of this model sends besides its messages and sampling.
        self._extra = extra_params(config)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of the chat completion request for ``request``."""
        config = self.config
        body: dict[str, Any] = {
            "model": config.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            self._limit_field: output_limit(config, request),
        }
        temperature = sampling_temperature(config, request)
        if temperature is not None:
            body["temperature"] = temperature
        if self._extra:
            body.update(self._extra)
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        guard = self._guard
        content = orjson.dumps(self.body(request))
        await self._slots.acquire()
        try:
            with guard:
                response = await self._post.send(content)
            try:
                reader = _Reader(guard.upstream)
                body = response.content
                while True:
                    with guard:
                        data = await body.read(READ_SIZE)
                    if not data:  # the end of the body: the connection goes back to the pool
                        break
                    for chunk in reader.read(data):
                        yield chunk
                    if reader.failure is not None:
                        raise reader.failure
            finally:
                # Closing an unfinished response drops the connection: the upstream stops
                # generating. A finished one is back in the pool already.
                response.close()
        finally:
            self._slots.release()
        if reader.finish is None:
            raise ended_early(guard.upstream)
        yield Chunk(usage=reader.usage, finish_reason=finish_reason(reader.finish))

    async def aclose(self) -> None:
        try:
            await self._post.aclose()
        finally:
            await self._client.close()


class _Reader:
    """The fields of one response's events the gateway needs (of choice 0)."""

    __slots__ = ("_events", "_upstream", "failure", "finish", "usage")

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._events = EventSplitter()
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.failure: UpstreamError | None = None

    def read(self, data: bytes) -> list[Chunk]:
        """The text and reasoning in ``data``: one chunk per run of one kind, in order. An
        error event or a malformed one ends the list and is left in :attr:`failure`."""
        chunks: list[Chunk] = []
        parts: list[str] = []
        thinking = False  # the kind of ``parts``
        try:
            for _, payload in self._events.feed(data):
                if payload == _DONE:
                    continue
                event = orjson.loads(payload)
                if event.get("error"):
                    raise stream_error(event, self._upstream)
                for choice in event.get("choices") or ():
                    if choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    if delta:
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                        if reasoning:
                            if not thinking and parts:
                                chunks.append(Chunk(text="".join(parts)))
                                parts = []
                            thinking = True
                            parts.append(reasoning)
                        text = delta.get("content") or delta.get("refusal")
                        if text:
                            if thinking and parts:
                                chunks.append(Chunk(reasoning="".join(parts)))
                                parts = []
                            thinking = False
                            parts.append(text)
                    if choice.get("finish_reason"):
                        self.finish = choice["finish_reason"]
                usage = event.get("usage")
                if usage:
                    self.usage = Usage(
                        prompt_tokens=int(usage["prompt_tokens"]),
                        completion_tokens=int(usage["completion_tokens"]),
                    )
            if parts:
                joined = "".join(parts)
                chunks.append(Chunk(reasoning=joined) if thinking else Chunk(text=joined))
        except UpstreamError as exc:
            self.failure = exc
        except (AttributeError, TypeError, ValueError, KeyError):
            # Not JSON (orjson.JSONDecodeError is a ValueError), or not the expected shape.
            self.failure = make(UpstreamProtocolError, self._upstream)
        if self.failure is not None and parts:
            # What came before the bad event still reaches the user, then the error.
            joined = "".join(parts)
            chunks.append(Chunk(reasoning=joined) if thinking else Chunk(text=joined))
        return chunks
