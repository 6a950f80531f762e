"""Model providers: one :class:`Provider` protocol, offline/OpenAI/Anthropic implementations.

This module also holds what the network providers share: the HTTP session
each model gets (transport, timeouts, connection limits) and the slots that
bound its concurrent requests. It imports no provider module, so every
provider module can import it.

Transport choices, per model (each model owns one pool, shared by its requests):

- aiohttp, with its C HTTP parser: one ``aiohttp.ClientSession`` per model
  (:func:`session`), opened on the model's first request. Each streamed
  request goes through it directly (:mod:`gateway.providers.request`). The
  SDK client keeps an HTTP client of its own (the SDK's aiohttp transport
  under httpx2, ``DefaultAioHttpClient``, :func:`http_client`) that sends
  nothing: the gateway reads its default headers, once. Measured on the same
  stream (bench/README.md): the SDK's aiohttp transport took about 2.5x less
  CPU per chunk and half the CPU per request of the default
  httpx2/httpcore2/h11 one; going around httpx2 altogether took a further
  tenth of a short answer's CPU.
- ``connect_timeout`` (5 s): an unreachable provider must fail fast so the
  router can fail over while the user still waits for a first token.
- ``read_timeout`` (60 s): the longest silence, both before the response
  starts and between two chunks. Streams are long but never silent that long;
  raise it for slow reasoning models.
- ``max_connections`` (1,000) and ``pool_timeout`` (5 s): with HTTP/1.1 every
  live stream holds a connection, so this caps concurrent streams per model.
  A request waits for a free slot at most ``pool_timeout``, then fails with
  :class:`~gateway.errors.UpstreamPoolTimeout` (-32016, retryable: the router
  fails over). The slots are the gateway's own (:class:`Slots`), not the
  transport's, so that wait is told apart from a slow connect; the transport's
  pool has the same size and so never makes anyone wait. Idle connections are
  kept 30 s for reuse (keep-alive).
- No cookie jar: the API calls are authenticated by key, and one session
  serves every user. A proxy named by the environment (``HTTPS_PROXY``,
  ``NO_PROXY``, as httpx2 honoured them) is looked up once per model, not on
  every request.
- SDK retries are off (``max_retries=0``): the router fails over to the
  model's ``fallbacks`` itself, and an SDK retrying with back-off (0.5-8 s)
  would stall a user waiting for the first token.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from gateway.errors import UpstreamPoolTimeout
from gateway.providers.base import ChatRequest, Chunk, Message, ModelConfig, Provider, Usage

if TYPE_CHECKING:
    import ssl

    import aiohttp
    import httpx2

__all__ = [
    "ChatRequest",
    "Chunk",
    "Message",
    "ModelConfig",
    "Provider",
    "Slots",
    "Usage",
    "client_timeout",
    "env_proxy",
    "extra_params",
    "http_client",
    "output_limit",
    "sampling_temperature",
    "session",
    "timeout",
]

# Timeouts (seconds) not configurable per model
WRITE_TIMEOUT = 10.0
# Limits, per model
KEEPALIVE_EXPIRY = 30.0

_SAMPLING = frozenset({"temperature", "max_tokens"})
"""The ``params`` keys the providers map themselves."""

# httpx2 and aiohttp are imported where they are used: an offline-only gateway never loads them.


def timeout(config: ModelConfig) -> httpx2.Timeout:
    """The per-operation timeouts of ``config``'s model."""
    import httpx2

    return httpx2.Timeout(
        connect=config.connect_timeout,
        read=config.read_timeout,
        write=WRITE_TIMEOUT,
        # aiohttp's transport takes this as its whole "connect" phase (host lookup, waiting
        # for the loop, the socket connect), while ``connect`` bounds the socket connect alone.
        # A storm of new connections on a busy loop (1,000 answers starting at once) queues
        # far longer than one socket connect takes; that wait is a pool wait.
        pool=config.connect_timeout + config.pool_timeout,
    )


def client_timeout(config: ModelConfig) -> aiohttp.ClientTimeout:
    """The same timeouts as :func:`timeout`, for the model's aiohttp session: no bound on the
    whole answer, ``read_timeout`` on each read (the response head and every chunk)."""
    import aiohttp

    return aiohttp.ClientTimeout(
        total=None,
        connect=config.connect_timeout + config.pool_timeout,  # see ``pool`` in :func:`timeout`
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )


def session(config: ModelConfig) -> aiohttp.ClientSession:
    """A new pooled aiohttp session for one model (call it inside the running loop); its
    owner closes it."""
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=config.max_connections,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_EXPIRY,
        ssl=_tls(),
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=client_timeout(config),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # proxies: :func:`env_proxy`, once
    )


def env_proxy(url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy (and its credentials) the environment names for ``url``, or ``(None, None)``:
    what aiohttp's ``trust_env`` would look up per request."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None
    return str(proxy), auth


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    import httpx2

    # Loading the CA store takes ~0.1 s; one context serves every model's clients.
    return httpx2.create_ssl_context()


def http_client(config: ModelConfig, cls: type[httpx2.AsyncClient]) -> httpx2.AsyncClient:
    """A new pooled client of ``cls`` (an SDK's ``DefaultAioHttpClient``) for one model's SDK
    client, which the provider closes in ``aclose``. The gateway's own requests do not go
    through it (:func:`session`); its defaults are read into them."""
    import httpx2

    limits = httpx2.Limits(
        max_connections=config.max_connections,
        max_keepalive_connections=config.max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    # Redirects are not followed: a redirected API call is a misconfigured base_url.
    return cls(timeout=timeout(config), limits=limits, verify=_tls(), follow_redirects=False)


class Slots:
    """At most ``config.max_connections`` requests to one model at once.

    :meth:`acquire` returns at once while a slot is free; otherwise it waits
    for one at most ``config.pool_timeout`` and then raises
    :class:`UpstreamPoolTimeout`. Every successful ``acquire`` is paired with
    one :meth:`release`.
    """

    __slots__ = ("_config", "_semaphore")

    def __init__(self, config: ModelConfig) -> None:
        self._config = config
        self._semaphore = asyncio.Semaphore(config.max_connections)

    async def acquire(self) -> None:
        semaphore = self._semaphore
        if not semaphore.locked():
            await semaphore.acquire()  # returns without suspending
            return
        config = self._config
        try:
            async with asyncio.timeout(config.pool_timeout):
                await semaphore.acquire()
        except TimeoutError:
            raise pool_timeout(config) from None

    def release(self) -> None:
        self._semaphore.release()


def pool_timeout(config: ModelConfig) -> UpstreamPoolTimeout:
    """The -32016 error of ``config``'s model."""
    label = f"model {config.name!r} ({config.provider})"
    exc = UpstreamPoolTimeout(
        f"All {config.max_connections} connections to {label} stayed busy for "
        f"{config.pool_timeout:g} s; retry later",
        provider=config.provider,
    )
    assert exc.data is not None
    exc.data.update({"limit": "maxConnections", "max": config.max_connections})
    return exc


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
