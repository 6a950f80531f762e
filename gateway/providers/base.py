"""The one interface every model provider implements, and the values it trades in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["ChatRequest", "Chunk", "Message", "ModelConfig", "Provider", "Usage"]

Role = Literal["system", "user", "assistant"]
"""The roles a message may have."""


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider is asked to complete; the system prompt is the first message(s)."""

    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    source: Literal["provider", "estimate"] = "provider"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a streamed answer: answer text or reasoning text (never both), and at the
    end usage and a finish reason.

    Network providers give one chunk per kind per network read: the events of a burst that
    arrived together are joined, so the layers above pay once per read, not once per event.
    """

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    reasoning: str = ""
    """The model's reasoning (``reasoning_content``, Anthropic's ``thinking_delta``)."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """One named model from the config file. Holds the *name* of the key's variable, never a key."""

    name: str
    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    context_window: int = 8192
    max_output_tokens: int = 1024
    fallbacks: tuple[str, ...] = ()
    params: dict[str, float | int | str] = field(default_factory=dict)
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None
    tokens_per_second: float = 0.0
    """Offline models only: pacing of the stream; 0 streams as fast as possible."""
    description: str = ""
    # Timeouts (seconds), network models only
    connect_timeout: float = 5.0
    """Opening a connection to the provider; short, so failover starts soon."""
    read_timeout: float = 60.0
    """Longest silence allowed while waiting for the answer to start and between chunks."""
    pool_timeout: float = 5.0
    """Longest wait for a free upstream connection before -32016 (then failover)."""
    # Limits, network models only
    max_connections: int = 1000
    """Concurrent upstream requests (= HTTP/1.1 connections) to this model; a stream holds one
    from its request to its end. The default fits one gateway process: 20,000 client sockets
    at most, and 1,000 concurrent paced answers measured in bench/providers.py."""


class Provider(Protocol):
    """Streams a completion. Implementations close their upstream in ``finally``.

    ``stream`` raises :class:`gateway.errors.UpstreamError` subclasses for
    provider failures; the last chunk carries ``finish_reason`` and, when the
    provider reports it, ``usage``.
    """

    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...
