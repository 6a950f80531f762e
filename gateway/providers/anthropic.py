"""Anthropic models over the official SDK: a streamed ``POST /v1/messages``.

One ``anthropic.AsyncAnthropic`` client per model (``max_retries=0``: the
router fails over instead). The SDK client says what a request looks like
(base URL, auth and ``anthropic-version`` headers), read once
(:mod:`gateway.providers.request`); each request goes out through the
model's pooled aiohttp session, with the limits and timeouts of
:mod:`gateway.providers`, and the gateway reads the event stream itself
with orjson, as the OpenAI provider does. The base URL is always passed,
so ``ANTHROPIC_BASE_URL`` in the gateway's environment cannot redirect a
model.

Mapping a :class:`ChatRequest` onto the Messages API:

- system messages are joined into ``system``;
- consecutive turns of one role are merged (the API wants them alternating);
- the first turn must be the user's, so a conversation that opens with an
  assistant turn (a greeting, say) gets a short placeholder user turn first;
- ``max_tokens`` is required: the request's limit, else the model's;
- temperature is sent in the body only when asked for (SDK 2.x names no such
  argument); other ``params`` are added to the body unchanged.

Events: ``text_delta`` is answer text; ``thinking_delta`` (extended thinking,
enabled with ``params.thinking``) is reasoning, yielded as separate chunks;
signatures, citations and tool input are skipped. Usage: ``input_tokens``
(plus cache reads/writes) from ``message_start``, ``output_tokens``
(cumulative, thinking included) from ``message_delta``. A stream is complete
only after ``message_stop``; ``event: error`` inside it is classified by its
``error.type``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
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
from gateway.providers.base import ChatRequest, Chunk, Message, ModelConfig, Usage
from gateway.providers.errors import (
    TRANSPORT,
    Target,
    Upstream,
    ended_early,
    from_status,
    from_timeout,
    make,
    map_exceptions,
    stream_error,
)
from gateway.providers.request import READ_SIZE, StreamingPost
from gateway.providers.sse import EventSplitter

__all__ = ["ANTHROPIC_BASE_URL", "OPENING_PLACEHOLDER", "AnthropicProvider", "to_messages"]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
PATH = "/v1/messages"
OPENING_PLACEHOLDER = "(conversation start)"
"""The user turn put before a conversation that opens with the assistant."""

_ERRORS: dict[type[BaseException], Target] = {
    anthropic.APITimeoutError: from_timeout,
    anthropic.APIConnectionError: UpstreamUnavailable,
    anthropic.APIResponseValidationError: UpstreamProtocolError,
    anthropic.APIStatusError: from_status,
    **TRANSPORT,
    anthropic.AnthropicError: UpstreamError,
}

_LENGTH_REASONS = frozenset({"max_tokens", "model_context_window_exceeded"})


def finish_reason(stop_reason: str | None) -> str:
    """Anthropic's stop reason in the gateway's terms: ``length`` or ``stop``."""
    return "length" if stop_reason in _LENGTH_REASONS else "stop"


def to_messages(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, str]]]:
    """``system`` text and alternating turns, starting with the user's."""
    system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
    turns: list[dict[str, str]] = []
    for m in messages:
        if m.role == "system" or not m.content:
            continue  # The API refuses empty turns.
        if turns and turns[-1]["role"] == m.role:
            turns[-1]["content"] += "\n\n" + m.content
        else:
            turns.append({"role": m.role, "content": m.content})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": OPENING_PLACEHOLDER})
    return system, turns


class AnthropicProvider:
    """Streams messages from Anthropic's API."""

    def __init__(self, config: ModelConfig, api_key: str) -> None:
        self.config = config
        upstream = Upstream(config.provider, config.name, (api_key,))
        self._guard = map_exceptions(_ERRORS, upstream)
        http = http_client(config, anthropic.DefaultAioHttpClient)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=config.base_url or ANTHROPIC_BASE_URL,
            max_retries=0,
            timeout=timeout(config),
            http_client=http,
        )
        self._post = StreamingPost(self._client, http, PATH, upstream, config)
        self._slots = Slots(config)
        self._extra = extra_params(config)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body of the messages request for ``request``."""
        config = self.config
        system, messages = to_messages(request.messages)
        body: dict[str, Any] = {
            "model": config.model,
            "messages": messages,
            "max_tokens": output_limit(config, request),
            "stream": True,
        }
        if system:
            body["system"] = system
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
                tally = _Tally(guard.upstream)
                body = response.content
                while True:  # To the end of the body, so the connection can be reused.
                    with guard:
                        data = await body.read(READ_SIZE)
                    if not data:  # the end of the body: the connection goes back to the pool
                        break
                    for chunk in tally.read(data):
                        yield chunk
                    if tally.failure is not None:
                        raise tally.failure
            finally:
                # Closing an unfinished response drops the connection: the upstream stops
                # generating. A finished one is back in the pool already.
                response.close()
        finally:
            self._slots.release()
        if not tally.stopped:
            raise ended_early(guard.upstream)
        yield Chunk(usage=tally.usage(), finish_reason=finish_reason(tally.stop_reason))

    async def aclose(self) -> None:
        try:
            await self._post.aclose()
        finally:
            await self._client.close()


class _Tally:
    """What a message stream has said so far, besides its text."""

    __slots__ = (
        "_events",
        "_upstream",
        "failure",
        "output_tokens",
        "prompt_tokens",
        "stop_reason",
        "stopped",
    )

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._events = EventSplitter()
        self.prompt_tokens: int | None = None
        self.output_tokens: int | None = None
        self.stop_reason: str | None = None
        self.stopped = False
        self.failure: UpstreamError | None = None

    def read(self, data: bytes) -> list[Chunk]:
        """Take in the events ``data`` completes; their text and reasoning, one chunk per run
        of one kind, in order. An error event or a malformed one ends the list and is left in
        :attr:`failure`."""
        chunks: list[Chunk] = []
        parts: list[str] = []
        thinking = False  # the kind of ``parts``
        try:
            for _, payload in self._events.feed(data):
                event = orjson.loads(payload)
                kind = event["type"]
                if kind == "content_block_delta":
                    delta = event["delta"]
                    if delta["type"] == "text_delta":
                        piece, is_thinking = delta["text"], False
                    elif delta["type"] == "thinking_delta":
                        piece, is_thinking = delta["thinking"], True
                    else:
                        continue  # signature, citations, tool input
                    if not piece:
                        continue
                    if is_thinking is not thinking and parts:
                        joined = "".join(parts)
                        chunks.append(Chunk(reasoning=joined) if thinking else Chunk(text=joined))
                        parts = []
                    thinking = is_thinking
                    parts.append(piece)
                elif kind == "message_start":
                    usage = event["message"]["usage"]
                    self.prompt_tokens = _input_tokens(usage)
                    self.output_tokens = int(usage.get("output_tokens") or 0)
                elif kind == "message_delta":
                    self.stop_reason = event["delta"].get("stop_reason") or self.stop_reason
                    usage = event.get("usage") or {}
                    if usage.get("output_tokens") is not None:
                        self.output_tokens = int(usage["output_tokens"])
                    self.prompt_tokens = _input_tokens(usage) or self.prompt_tokens
                elif kind == "message_stop":
                    self.stopped = True
                elif kind == "error":
                    raise stream_error(event, self._upstream)
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

    def usage(self) -> Usage | None:
        if self.prompt_tokens is None or self.output_tokens is None:
            return None
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.output_tokens)


def _input_tokens(usage: dict[str, Any]) -> int | None:
    """All prompt tokens of a usage object: fresh input plus cache reads and writes."""
    if usage.get("input_tokens") is None:
        return None
    cached = (usage.get("cache_creation_input_tokens") or 0) + (
        usage.get("cache_read_input_tokens") or 0
    )
    return int(usage["input_tokens"]) + int(cached)
