"""Named models -> providers: building them, describing them, and streaming from them.

A :class:`RoutedStream` is one answer. Before each attempt it trims the
history to the model's context window; it fails over to the model's
``fallbacks`` (in order, skipping unavailable ones) only while nothing (text
or reasoning) has been streamed and only for retryable failures (connection, 5xx, 429,
timeout). Once text has reached the user the model never changes: a later
failure is raised as it is. Usage is the provider's when it reports it,
else a tiktoken estimate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from gateway import metrics
from gateway.errors import LimitExceeded, ModelUnavailable, UpstreamError
from gateway.providers import output_limit
from gateway.providers.base import ChatRequest, Chunk, Message, ModelConfig, Provider, Usage
from gateway.providers.offline import OfflineProvider
from gateway.providers.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    count_message,
    count_messages,
    count_text,
)
from gateway.providers.tokens import encoding as load_encoding

__all__ = ["ModelRouter", "RoutedStream", "StreamResult", "cost", "fit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How a routed stream ended."""

    model: str
    """The model that answered (a fallback when the requested one failed first)."""
    finish_reason: str
    usage: Usage
    dropped_turns: int = 0
    """Oldest history messages left out to fit the model's context window."""


def fit(config: ModelConfig, request: ChatRequest) -> tuple[ChatRequest, int]:
    """``request`` trimmed to ``config``'s context window, and how many messages were dropped.

    The window must hold the prompt and the answer's limit. System messages
    and everything from the latest user message on are always kept; older
    turns are kept newest first while they fit, and a trimmed history never
    opens with an assistant turn (its question is gone). Raises
    :class:`LimitExceeded` when even that minimum does not fit. A prompt
    whose UTF-8 bytes fit is not counted at all (the common case: a few
    microseconds rather than a hash and a cache look-up per message).
    """
    limit = output_limit(config, request)
    budget = config.context_window - limit
    messages = request.messages
    if _byte_bound(messages) <= budget:
        # Everything fits, no need to count: a token stands for at least one byte of UTF-8.
        return replace(request, max_tokens=limit), 0
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=len(messages))
    keep = {i for i, m in enumerate(messages) if m.role == "system" or i >= last_user}
    used = REPLY_PRIMING + sum(count_message(messages[i]) for i in keep)
    if used > budget:
        raise LimitExceeded(
            f"The message and system prompt need {used} tokens; model {config.name!r} has room "
            f"for {max(budget, 0)} (context window {config.context_window} minus {limit} for "
            "the answer)",
            data={"limit": "contextWindow"},
        )
    for i in range(last_user - 1, -1, -1):
        if i in keep:
            continue
        need = count_message(messages[i])
        if used + need > budget:
            break
        used += need
        keep.add(i)
    if len(keep) < len(messages):
        # An answer whose question was dropped would open the history: drop it too.
        history = sorted(i for i in keep if messages[i].role != "system")
        for i in history:
            if messages[i].role != "assistant" or i >= last_user:
                break
            keep.discard(i)
    dropped = len(messages) - len(keep)
    trimmed = tuple(m for i, m in enumerate(messages) if i in keep) if dropped else messages
    return replace(request, messages=trimmed, max_tokens=limit), dropped


def _byte_bound(messages: tuple[Message, ...]) -> int:
    """At least the prompt tokens of ``messages`` (each token is one byte of text or more)."""
    total = REPLY_PRIMING
    for m in messages:
        content = m.content
        size = len(content) if content.isascii() else len(content.encode("utf-8", "surrogatepass"))
        total += MESSAGE_OVERHEAD + len(m.role) + size
    return total


def cost(config: ModelConfig, usage: Usage) -> float | None:
    """Price of ``usage`` in the currency of the config's prices; None when it has none."""
    if config.price_input_per_mtok is None and config.price_output_per_mtok is None:
        return None
    return (
        usage.prompt_tokens * (config.price_input_per_mtok or 0.0)
        + usage.completion_tokens * (config.price_output_per_mtok or 0.0)
    ) / 1_000_000


def _build(config: ModelConfig, env: Mapping[str, str]) -> Provider | str:
    """The provider for ``config``, or why it cannot serve (safe to show: names no variable)."""
    if config.provider == "offline":
        return OfflineProvider(config)
    key = ""
    if config.api_key_env:
        key = env.get(config.api_key_env, "")
        if not key:
            log.warning(
                "model %s (%s) is unavailable: environment variable %s is not set",
                config.name,
                config.provider,
                config.api_key_env,
            )
            return "its API key is not configured"
    elif not (config.provider == "openai" and config.base_url):
        # Only a self-hosted OpenAI-compatible server may go without a key.
        log.warning(
            "model %s (%s) is unavailable: it names no api_key_env", config.name, config.provider
        )
        return "its API key is not configured"
    if config.provider == "openai":
        from gateway.providers.openai import OpenAIProvider

        return OpenAIProvider(config, key)
    if config.provider == "anthropic":
        from gateway.providers.anthropic import AnthropicProvider

        return AnthropicProvider(config, key)
    log.warning("model %s is unavailable: unknown provider %r", config.name, config.provider)
    return "its provider is not supported"


class ModelRouter:
    """Holds one provider per configured model (shared by all requests)."""

    def __init__(self, models: Sequence[ModelConfig], *, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self._configs = {m.name: m for m in models}
        self._providers: dict[str, Provider] = {}
        self._unavailable: dict[str, str] = {}
        for model in models:
            built = _build(model, env)
            if isinstance(built, str):
                self._unavailable[model.name] = built
            else:
                self._providers[model.name] = built
        # Each model's failover chain, looked up once here rather than on every request.
        self._chains: dict[str, tuple[tuple[str, ModelConfig, Provider], ...]] = {
            name: tuple(
                (candidate, self._configs[candidate], self._providers[candidate])
                for candidate in self.candidates(name)
            )
            for name in self._providers
        }
        # Loading the encoding takes a fraction of a second: pay it at start, not in a request.
        load_encoding()

    def get(self, name: str) -> ModelConfig | None:
        return self._configs.get(name)

    def names(self) -> list[str]:
        return list(self._configs)

    def is_available(self, name: str) -> bool:
        return name in self._providers

    def describe(self, name: str) -> dict[str, Any]:
        """Public facts about a model; nothing secret (no key, no key variable, no URL)."""
        m = self._configs[name]
        return {
            "name": m.name,
            "provider": m.provider,
            "model": m.model,
            "contextWindow": m.context_window,
            "maxOutputTokens": m.max_output_tokens,
            "available": self.is_available(name),
            "description": m.description,
        }

    def cost(self, name: str, usage: Usage) -> float | None:
        """Price of ``usage`` on model ``name``; None when the model has no prices."""
        return cost(self._configs[name], usage)

    def open(self, name: str, request: ChatRequest) -> RoutedStream:
        """A stream of ``name``'s answer to ``request``; nothing is sent before iteration."""
        if name not in self._providers:
            reason = self._unavailable.get(name, "it is not configured")
            raise ModelUnavailable(f"Model {name!r} is not available: {reason}")
        return RoutedStream(self, name, request)

    def provider(self, name: str) -> Provider:
        return self._providers[name]

    def chain(self, name: str) -> tuple[tuple[str, ModelConfig, Provider], ...]:
        """``name`` and its available fallbacks with their configs and providers, in order."""
        return self._chains[name]

    def candidates(self, name: str) -> list[str]:
        """``name`` and then its available fallbacks, in order, each once."""
        chain = [name]
        for fallback in self._configs[name].fallbacks:
            if fallback not in chain and self.is_available(fallback):
                chain.append(fallback)
        return chain

    async def aclose(self) -> None:
        for name, provider in self._providers.items():
            try:
                await provider.aclose()
            except Exception:
                log.warning("closing model %s failed", name, exc_info=True)


class RoutedStream:
    """The chunks of one answer (text or reasoning, never empty); ``result`` is set once
    iteration ends.

    Iterate once (``async for chunk in stream``). ``aclose()`` (or leaving
    ``async with stream``) from the iterating task, or cancelling that task,
    closes the upstream response at once. After the first chunk each step is
    one call into the provider's generator: no generator of its own in
    between.
    """

    def __init__(self, router: ModelRouter, name: str, request: ChatRequest) -> None:
        self._router = router
        self._request = request
        self.model = name
        """The model being (or last) tried."""
        self.result: StreamResult | None = None
        self._sent = request
        self._dropped = 0
        self._pieces: list[str] = []
        self._chunks: AsyncIterator[Chunk] | None = None
        self._done = False
        self._metrics = metrics.ModelCall(name)

    def __aiter__(self) -> RoutedStream:
        return self

    async def __anext__(self) -> Chunk:
        chunks = self._chunks
        if chunks is None:
            if self._done:
                raise StopAsyncIteration
            return await self._first()
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            chunk = _ENDED  # a provider that ended without its final chunk
        except UpstreamError as exc:
            self._metrics.upstream_error(exc, failover=False)
            raise
        if chunk.finish_reason is None:
            self._metrics.chunk()
            self._pieces.append(chunk.text or chunk.reasoning)
            return chunk
        await self._end(chunk)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        chunks, self._chunks = self._chunks, None
        self._done = True
        await _close(chunks)
        self._metrics.closed(lambda: self.result.usage if self.result else self.partial_usage())

    async def __aenter__(self) -> RoutedStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _first(self) -> Chunk:
        """Try the model, then its fallbacks, until one gives a first chunk (or ends)."""
        self._done = True  # whatever happens here, this stream is not opened twice
        chain = self._router.chain(self.model)
        failure: UpstreamError | None = None
        for position, (name, config, provider) in enumerate(chain):
            try:
                request, dropped = fit(config, self._request)
            except LimitExceeded:
                if failure is None:
                    raise  # The requested model itself cannot take this conversation.
                log.warning("fallback model %s skipped: the conversation does not fit", name)
                continue
            self.model, self._sent, self._dropped = name, request, dropped
            self._metrics.attempt(config)
            chunks = provider.stream(request)
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                chunk = _ENDED
            except UpstreamError as exc:
                await _close(chunks)
                last = not exc.retryable or position == len(chain) - 1
                self._metrics.upstream_error(exc, failover=not last)
                if last:
                    raise
                failure = exc
                log.warning(
                    "model %s failed before its first token, failing over to %s: %s",
                    name,
                    chain[position + 1][0],
                    exc.message,
                    extra={
                        "event": "failover",
                        "from_model": name,
                        "to_model": chain[position + 1][0],
                        "error_type": metrics.error_kind(exc),
                    },
                )
                continue
            except BaseException:
                await _close(chunks)
                raise
            if chunk.finish_reason is not None:  # an empty answer
                await self._end(chunk, chunks)
                raise StopAsyncIteration
            self._chunks = chunks
            self._metrics.chunk()
            self._pieces.append(chunk.text or chunk.reasoning)
            return chunk
        assert failure is not None
        raise failure

    async def _end(self, last: Chunk, chunks: AsyncIterator[Chunk] | None = None) -> None:
        self.result = StreamResult(
            model=self.model,
            finish_reason=last.finish_reason or "stop",
            usage=last.usage or self.partial_usage(),
            dropped_turns=self._dropped,
        )
        if chunks is not None:
            self._chunks = chunks
        await self.aclose()

    def partial_usage(self) -> Usage:
        """Estimated usage so far (for a stream that was cancelled or failed, or whose
        provider reports none); reasoning counts as output."""
        return Usage(
            prompt_tokens=count_messages(self._sent.messages),
            completion_tokens=count_text("".join(self._pieces)),
            source="estimate",
        )


_ENDED = Chunk(finish_reason="stop")


async def _close(iterator: object) -> None:
    """Close an async generator (a provider's stream) if it is one."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
