"""Anthropic models over the official SDK (``messages.create(stream=True)``).

One ``anthropic.AsyncAnthropic`` client per model with the transport of
:mod:`gateway.providers` (``max_retries=0``: the router fails over instead).
The base URL is always passed, so ``ANTHROPIC_BASE_URL`` in the gateway's
environment cannot redirect a model.

Mapping a :class:`ChatRequest` onto the Messages API:

- system messages are joined into ``system``;
- consecutive turns of one role are merged (the API wants them alternating);
- the first turn must be the user's, so a conversation that opens with an
  assistant turn (a greeting, say) gets a short placeholder user turn first;
- ``max_tokens`` is required: the request's limit, else the model's;
- temperature is sent in the body only when asked for (SDK 2.x names no such
  argument); other ``params`` are added to the body unchanged.

Usage: ``input_tokens`` (plus cache reads/writes) from ``message_start``,
``output_tokens`` (cumulative) from ``message_delta``. A stream is complete
only after ``message_stop``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import anthropic
from anthropic.types import (
    MessageParam,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    RawMessageStreamEvent,
    TextDelta,
)

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
from gateway.providers.base import ChatRequest, Chunk, Message, ModelConfig, Usage
from gateway.providers.errors import (
    TRANSPORT,
    Target,
    Upstream,
    ended_early,
    from_status,
    make,
    map_exceptions,
)

__all__ = ["ANTHROPIC_BASE_URL", "OPENING_PLACEHOLDER", "AnthropicProvider", "to_messages"]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
OPENING_PLACEHOLDER = "(conversation start)"
"""The user turn put before a conversation that opens with the assistant."""

_ERRORS: dict[type[BaseException], Target] = {
    anthropic.APITimeoutError: UpstreamTimeout,
    anthropic.APIConnectionError: UpstreamUnavailable,
    anthropic.APIResponseValidationError: UpstreamProtocolError,
    # Also an ``event: error`` inside the stream (status 200): classified by error.type.
    anthropic.APIStatusError: from_status,
    **TRANSPORT,
    anthropic.AnthropicError: UpstreamError,
}

_LENGTH_REASONS = frozenset({"max_tokens", "model_context_window_exceeded"})


def finish_reason(stop_reason: str | None) -> str:
    """Anthropic's stop reason in the gateway's terms: ``length`` or ``stop``."""
    return "length" if stop_reason in _LENGTH_REASONS else "stop"


def to_messages(messages: tuple[Message, ...]) -> tuple[str, list[MessageParam]]:
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
    return system, cast(list[MessageParam], turns)


class AnthropicProvider:
    """Streams messages from Anthropic's API."""

    def __init__(self, config: ModelConfig, api_key: str) -> None:
        self.config = config
        self._guard = map_exceptions(_ERRORS, Upstream(config.provider, config.name, (api_key,)))
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=config.base_url or ANTHROPIC_BASE_URL,
            max_retries=0,
            timeout=timeout(config),
            http_client=http_client(config),
        )

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for ``request``."""
        system, messages = to_messages(request.messages)
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": output_limit(self.config, request),
            "stream": True,
        }
        if system:
            body["system"] = system
        extra = extra_params(self.config)
        temperature = sampling_temperature(self.config, request)
        if temperature is not None:
            extra["temperature"] = temperature
        if extra:
            body["extra_body"] = extra
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        guard = self._guard
        with guard:
            response = cast(
                "anthropic.AsyncStream[RawMessageStreamEvent]",
                await self._client.messages.create(**self.body(request)),
            )
        tally = _Tally()
        try:
            while True:  # To the end of the body, so the connection can be reused.
                with guard:
                    try:
                        event = await anext(response)
                    except StopAsyncIteration:
                        break
                try:
                    text = tally.read(event)
                except (AttributeError, TypeError, ValueError):
                    # The SDK builds events without validation: a wrong shape shows up here.
                    raise make(UpstreamProtocolError, guard.upstream) from None
                if text:
                    yield Chunk(text=text)
        finally:
            # Closing an unfinished response drops the connection: the upstream stops generating.
            with contextlib.suppress(Exception):
                await response.close()
        if not tally.stopped:
            raise ended_early(guard.upstream)
        yield Chunk(usage=tally.usage(), finish_reason=finish_reason(tally.stop_reason))

    async def aclose(self) -> None:
        await self._client.close()


@dataclass(slots=True)
class _Tally:
    """What a message stream has said so far, besides its text."""

    prompt_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    stopped: bool = False

    def read(self, event: RawMessageStreamEvent) -> str:
        """Take in one event; its text, if it carries any."""
        if isinstance(event, RawContentBlockDeltaEvent):
            return event.delta.text if isinstance(event.delta, TextDelta) else ""
        if isinstance(event, RawMessageStartEvent):
            self.prompt_tokens = _input_tokens(event.message.usage)
            self.output_tokens = int(event.message.usage.output_tokens)
        elif isinstance(event, RawMessageDeltaEvent):
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self.output_tokens = int(event.usage.output_tokens)
            self.prompt_tokens = _input_tokens(event.usage) or self.prompt_tokens
        elif isinstance(event, RawMessageStopEvent):
            self.stopped = True
        return ""

    def usage(self) -> Usage | None:
        if self.prompt_tokens is None or self.output_tokens is None:
            return None
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.output_tokens)


def _input_tokens(usage: Any) -> int | None:
    """All prompt tokens of a usage object: fresh input plus cache reads and writes."""
    if usage is None or usage.input_tokens is None:
        return None
    cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    return int(usage.input_tokens) + int(cached)
