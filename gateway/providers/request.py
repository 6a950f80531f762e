"""One model's streamed ``POST``: prepared once from its SDK client, sent per answer.

The SDK says what a request to its API looks like: the base URL, the auth
header, the API version and its own identification headers
(``base_url``, ``default_headers`` and ``auth_headers``, public properties of
``AsyncOpenAI`` and ``AsyncAnthropic``). The gateway reads them once, on a
model's first request (inside the event loop, so the SDK reports the async
library it runs on), and from then on sends each answer's request itself
through the SDK's configured HTTP client (the ``DefaultAioHttpClient`` of
:func:`gateway.providers.http_client`, the one the SDK client was given)
with ``send(..., stream=True)``.

Why not ``client.post(..., stream=True)`` on every request: the SDK's
request path rebuilds all of that per call (a pydantic options model and
two copies of it, header merging and validation, URL joining, retry
bookkeeping, an idempotency key), about 0.3 ms of CPU per request against
0.2 ms for everything else on the HTTP side (bench/README.md). What is sent
is the same: :func:`prepare` keeps the SDK's headers and the HTTP client's
own defaults, and tests compare the two paths' requests header by header.

A response that is not 2xx is read (error bodies are small) and closed,
and becomes the gateway error for its status (:func:`status_error`), as the
SDK's status errors did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
import orjson

from gateway.errors import UpstreamError
from gateway.providers.errors import Upstream, status_error

__all__ = ["Prepared", "SDKClient", "StreamingPost", "prepare"]


class SDKClient(Protocol):
    """What the gateway reads from an ``AsyncOpenAI`` / ``AsyncAnthropic`` client."""

    @property
    def base_url(self) -> httpx2.URL: ...

    @property
    def default_headers(self) -> Mapping[str, Any]: ...

    @property
    def auth_headers(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    url: httpx2.URL
    headers: httpx2.Headers
    extensions: dict[str, Any]


def prepare(sdk: SDKClient, http: httpx2.AsyncClient, path: str, read_timeout: float) -> Prepared:
    """The URL, headers and transport options of every request to ``path``, as the SDK would
    build them for ``client.post(path, ...)`` with ``max_retries=0``."""
    base = sdk.base_url
    url = base.copy_with(raw_path=base.raw_path + path.lstrip("/").encode())
    headers: dict[str, str] = {}
    for source in (sdk.auth_headers, sdk.default_headers):
        for name, value in source.items():
            if isinstance(value, str):  # the SDK marks removed headers with Omit()
                headers[name] = value
    headers["X-Stainless-Retry-Count"] = "0"
    headers["X-Stainless-Read-Timeout"] = str(read_timeout)
    # The HTTP client adds its own defaults (accept-encoding, connection) and the timeouts.
    template = http.build_request("POST", url, headers=headers)
    raw = template.headers.raw
    merged = httpx2.Headers([(k, v) for k, v in raw if k.lower() != b"content-length"])
    return Prepared(url=url, headers=merged, extensions=dict(template.extensions))


class StreamingPost:
    """Sends a model's streamed requests; raises its gateway error for a non-2xx status."""

    __slots__ = ("_http", "_path", "_prepared", "_read_timeout", "_sdk", "_upstream")

    def __init__(
        self,
        sdk: SDKClient,
        http: httpx2.AsyncClient,
        path: str,
        upstream: Upstream,
        read_timeout: float,
    ) -> None:
        self._sdk = sdk
        self._http = http
        self._path = path
        self._upstream = upstream
        self._read_timeout = read_timeout
        self._prepared: Prepared | None = None

    @property
    def prepared(self) -> Prepared:
        prepared = self._prepared
        if prepared is None:
            prepared = self._prepared = prepare(
                self._sdk, self._http, self._path, self._read_timeout
            )
        return prepared

    async def send(self, content: bytes) -> httpx2.Response:
        """The streaming response to ``content`` (a JSON body), its status 2xx."""
        prepared = self.prepared
        request = httpx2.Request(
            "POST",
            prepared.url,
            headers=prepared.headers,
            content=content,
            extensions=prepared.extensions,
        )
        response = await self._http.send(request, stream=True)
        if response.is_success:
            return response
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
        raise self.error(response, raw)

    def error(self, response: httpx2.Response, raw: bytes) -> UpstreamError:
        body: object
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        return status_error(response.status_code, response.headers, body, self._upstream)
