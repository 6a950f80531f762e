"""One model's streamed ``POST``: prepared once from its SDK client, sent per answer over aiohttp.

The SDK says what a request to its API looks like: the base URL, the auth
header, the API version and its own identification headers
(``base_url``, ``default_headers`` and ``auth_headers``, public properties of
``AsyncOpenAI`` and ``AsyncAnthropic``). The gateway reads them once, on a
model's first request (inside the event loop, so the SDK reports the async
library it runs on), adds the defaults of the SDK's HTTP client (the
``DefaultAioHttpClient`` of :func:`gateway.providers.http_client`:
``accept-encoding``, ``connection``), and from then on sends each answer's
request itself, straight through one pooled ``aiohttp.ClientSession`` per
model (:func:`gateway.providers.session`), and reads the body with
``response.content.read(READ_SIZE)``.

Why not ``client.post(..., stream=True)`` on every request: the SDK's
request path rebuilds all of that per call (a pydantic options model and
two copies of it, header merging and validation, URL joining, retry
bookkeeping, an idempotency key), about 0.3 ms of CPU per request. Why not
the SDK's HTTP client's ``send``: the SDK's aiohttp transport sits under
httpx2, which builds an httpx2 request and response around aiohttp's and
re-maps every exception, about a tenth of a short answer's CPU
(bench/README.md). What is sent is the same: tests compare this path's
requests to ``client.post``'s header by header.

Errors need no httpx2 either: aiohttp's own exceptions map through
:data:`gateway.providers.errors.TRANSPORT` (a refused or failed connection
or a body cut short -> UpstreamUnavailable; the connect timeout and read
silence -> UpstreamTimeout). A response that is not 2xx is read (error
bodies are small), released, and becomes the gateway error for its status
(:func:`status_error`), as the SDK's status errors did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.errors import UpstreamError
from gateway.providers import ModelConfig, env_proxy, session
from gateway.providers.errors import Upstream, status_error

if TYPE_CHECKING:
    import aiohttp
    import httpx2

__all__ = ["READ_SIZE", "SDKClient", "StreamingPost", "prepare"]

READ_SIZE = 16 * 1024
"""Most bytes of the body taken per read, as the SDK's aiohttp transport read them: what a
fast upstream has sent while the gateway was busy is split into pieces of at most this
much, which a lagging client's outbound queue can still merge (up to 64 KiB a frame)."""


class SDKClient(Protocol):
    """What the gateway reads from an ``AsyncOpenAI`` / ``AsyncAnthropic`` client."""

    @property
    def base_url(self) -> httpx2.URL: ...

    @property
    def default_headers(self) -> Mapping[str, Any]: ...

    @property
    def auth_headers(self) -> Mapping[str, str]: ...


def prepare(
    sdk: SDKClient, http: httpx2.AsyncClient, path: str, read_timeout: float
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The URL and headers of every request to ``path``, as the SDK would build them for
    ``client.post(path, ...)`` with ``max_retries=0`` on its HTTP client ``http``."""
    base = sdk.base_url
    url = base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode())
    headers: dict[str, str] = {}
    for source in (sdk.auth_headers, sdk.default_headers):
        for name, value in source.items():
            if isinstance(value, str):  # the SDK marks removed headers with Omit()
                headers[name] = value
    headers["X-Stainless-Retry-Count"] = "0"
    headers["X-Stainless-Read-Timeout"] = str(read_timeout)
    # The HTTP client adds its own defaults (host, accept-encoding, connection).
    template = http.build_request("POST", url, headers=headers)
    merged = tuple(
        (name, value)
        for name, value in template.headers.multi_items()
        if name.lower() != "content-length"  # aiohttp sets the body's own
    )
    return str(url), merged


class StreamingPost:
    """Sends a model's streamed requests; raises its gateway error for a non-2xx status.

    Holds the model's pooled ``aiohttp.ClientSession``, opened on the first
    request (inside the running loop) and closed by :meth:`aclose`.
    """

    __slots__ = (
        "_config",
        "_headers",
        "_http",
        "_path",
        "_proxy",
        "_sdk",
        "_session",
        "_upstream",
        "_url",
    )

    def __init__(
        self,
        sdk: SDKClient,
        http: httpx2.AsyncClient,
        path: str,
        upstream: Upstream,
        config: ModelConfig,
    ) -> None:
        self._sdk = sdk
        self._http = http
        self._path = path
        self._upstream = upstream
        self._config = config
        self._url = ""
        self._headers: tuple[tuple[str, str], ...] = ()
        self._proxy: tuple[str | None, aiohttp.BasicAuth | None] = (None, None)
        self._session: aiohttp.ClientSession | None = None

    def _prepare(self) -> None:
        self._url, self._headers = prepare(
            self._sdk, self._http, self._path, self._config.read_timeout
        )
        self._proxy = env_proxy(self._url)

    async def send(self, content: bytes) -> aiohttp.ClientResponse:
        """The streaming response to ``content`` (a JSON body), its status 2xx."""
        http = self._session
        if http is None:
            if not self._url:
                self._prepare()
            http = self._session = session(self._config)
        proxy, proxy_auth = self._proxy
        response = await http.post(
            self._url,
            data=content,
            headers=self._headers,
            allow_redirects=False,  # a redirected API call is a misconfigured base_url
            proxy=proxy,
            proxy_auth=proxy_auth,
        )
        if 200 <= response.status < 300:
            return response
        try:
            raw = await response.read()
        finally:
            response.release()
        raise self.error(response, raw)

    def error(self, response: aiohttp.ClientResponse, raw: bytes) -> UpstreamError:
        body: object
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        return status_error(response.status, response.headers, body, self._upstream)

    async def aclose(self) -> None:
        """Close the pooled connections (the next :meth:`send` would open a new pool)."""
        http, self._session = self._session, None
        if http is not None:
            await http.close()
