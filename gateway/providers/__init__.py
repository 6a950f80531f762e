"""Model providers: one :class:`Provider` protocol, offline/OpenAI/Anthropic implementations.

This module also holds what the network providers share: the HTTP client
each model gets (timeouts and connection limits). It imports no provider
module, so every provider module can import it.

Transport choices, per model (each model owns one client, shared by its requests):

- ``connect_timeout`` (5 s): an unreachable provider must fail fast so the
  router can fail over while the user still waits for a first token.
- ``read_timeout`` (60 s): the longest silence, both before the response
  starts and between two chunks. Streams are long but never silent that long;
  raise it for slow reasoning models.
- write 10 s, pool 5 s: a prompt upload never takes long; waiting longer than
  5 s for a free connection means the model is saturated, so fail over.
- ``max_connections`` 100: with HTTP/1.1 every live stream holds a
  connection, so this caps concurrent streams per model; 20 idle connections
  are kept 30 s for reuse.
- SDK retries are off (``max_retries=0``): the router fails over to the
  model's ``fallbacks`` itself, and an SDK retrying with back-off (0.5-8 s)
  would stall a user waiting for the first token.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from gateway.providers.base import ChatRequest, Chunk, Message, ModelConfig, Provider, Usage

if TYPE_CHECKING:
    import ssl

    import httpx2

__all__ = [
    "ChatRequest",
    "Chunk",
    "Message",
    "ModelConfig",
    "Provider",
    "Usage",
    "extra_params",
    "http_client",
    "output_limit",
    "sampling_temperature",
    "timeout",
]

# Timeouts (seconds) not configurable per model
WRITE_TIMEOUT = 10.0
POOL_TIMEOUT = 5.0
# Limits, per model
MAX_CONNECTIONS = 100
MAX_KEEPALIVE_CONNECTIONS = 20
KEEPALIVE_EXPIRY = 30.0

_SAMPLING = frozenset({"temperature", "max_tokens"})
"""The ``params`` keys the providers map themselves."""

# httpx2 is imported where it is used: an offline-only gateway never loads it (~0.1 s).


def timeout(config: ModelConfig) -> httpx2.Timeout:
    """The per-operation timeouts of ``config``'s model."""
    import httpx2

    return httpx2.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=WRITE_TIMEOUT,
        pool=POOL_TIMEOUT,
    )


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    import httpx2

    # Loading the CA store takes ~0.1 s; one context serves every model's client.
    return httpx2.create_ssl_context()


def http_client(config: ModelConfig) -> httpx2.AsyncClient:
    """A new pooled client for one model; the provider closes it in ``aclose``."""
    import httpx2

    limits = httpx2.Limits(
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    # Redirects are not followed: a redirected API call is a misconfigured base_url.
    return httpx2.AsyncClient(
        timeout=timeout(config), limits=limits, verify=_tls(), follow_redirects=False
    )


def output_limit(config: ModelConfig, request: ChatRequest) -> int:
    """The answer's token limit: the request's, else ``params.max_tokens``; at most the model's."""
    ceiling = config.max_output_tokens
    if request.max_tokens:
        return max(1, min(request.max_tokens, ceiling))
    return max(1, min(int(config.params.get("max_tokens", ceiling)), ceiling))


def sampling_temperature(config: ModelConfig, request: ChatRequest) -> float | None:
    """The request's temperature, else ``params.temperature``, else None (provider default)."""
    if request.temperature is not None:
        return request.temperature
    value = config.params.get("temperature")
    return None if value is None else float(value)


def extra_params(config: ModelConfig) -> dict[str, Any]:
    """``params`` other than temperature and max_tokens: sent in the request body as they are."""
    return {k: v for k, v in config.params.items() if k not in _SAMPLING}
