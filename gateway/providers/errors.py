"""Foreign exceptions (aiohttp, SDK, httpx2, JSON) become :mod:`gateway.errors` upstream errors.

Each provider module wraps every call into the network in a
:func:`map_exceptions` guard built from its own table, most specific class
first, ending with the :data:`TRANSPORT` entries every provider shares::

    aiohttp.ServerTimeoutError                          -> UpstreamTimeout
        (the connect timeout; read silence before the head or between chunks)
    aiohttp.ClientError                                 -> UpstreamUnavailable
        (refused or failed connection, a body cut short, a dropped connection)
    openai.APITimeoutError, httpx2.TimeoutException     -> from_timeout (below)
    openai.APIConnectionError, httpx2.TransportError    -> UpstreamUnavailable
    openai.APIStatusError                               -> from_status (below)
    json.JSONDecodeError, pydantic.ValidationError      -> UpstreamProtocolError

The providers' requests go through aiohttp directly
(:mod:`gateway.providers.request`), so its exceptions are the ones raised;
the SDK and httpx2 entries map what a call through the SDK client raises.
:func:`from_timeout`: the SDK's aiohttp transport reports some failures that
are not timeouts as httpx2 timeouts (a refused connection becomes
``ConnectTimeout``); the chain of causes tells them apart, so a refused
connection stays UpstreamUnavailable.

:func:`status_error` (and :func:`from_status`, for an SDK status error): 401/403
auth, 429 rate limited (``retry-after``), 408/504 timeout, other 5xx
unavailable, other 4xx a plain non-retryable :class:`UpstreamError`. An error
event inside a 200 stream is classified by its ``error.type``.

Messages name the model and provider and say what helps; provider text is
quoted only for 4xx refusals (where it is the useful part), scrubbed of the
API key and of anything shaped like a key, and cut short. The original
exception is not chained (``from None``): SDK messages may quote the key.
"""

from __future__ import annotations

import email.utils
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import httpx2
import pydantic

from gateway.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = [
    "TRANSPORT",
    "ExceptionMap",
    "Target",
    "Translator",
    "Upstream",
    "ended_early",
    "from_error_type",
    "from_status",
    "from_timeout",
    "make",
    "map_exceptions",
    "parse_retry_after",
    "status_error",
    "stream_error",
]


@dataclass(frozen=True, slots=True)
class Upstream:
    """Who is being called: named in messages; ``secrets`` never appear in any text."""

    provider: str
    model: str
    secrets: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"model {self.model!r} ({self.provider})"

    def scrub(self, text: str, *, limit: int = 300) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        text = _KEY_SHAPED.sub("[redacted]", text)
        return text if len(text) <= limit else text[: limit - 1] + "…"


Translator = Callable[[BaseException, Upstream], UpstreamError]
"""Builds the gateway error for one foreign exception."""

Target = type[UpstreamError] | Translator
"""A table entry's value: an upstream error class, or a translator for richer cases."""

_KEY_SHAPED = re.compile(r"\b(?:sk|key|api|tok)[-_][A-Za-z0-9_\-*.]{6,}")

_TEMPLATES: dict[type[UpstreamError], tuple[str, str]] = {
    # class: (what happened, what helps)
    UpstreamAuthError: (
        "The provider rejected the gateway's API key for {label}",
        "; an operator must fix the key",
    ),
    UpstreamRateLimited: ("The provider is rate limiting {label}", "; retry later"),
    UpstreamUnavailable: ("Could not reach {label}, or it dropped the connection", "; retry later"),
    UpstreamTimeout: ("{Label} did not answer in time", "; retry later"),
    UpstreamProtocolError: ("{Label} sent a malformed stream", ""),
    UpstreamError: ("{Label} failed", ""),
}


def make(
    cls: type[UpstreamError],
    upstream: Upstream,
    *,
    status: int | None = None,
    retry_after: float | None = None,
    detail: str = "",
    what: str | None = None,
) -> UpstreamError:
    """An instance of ``cls`` with the standard message for ``upstream`` (``what`` replaces
    its first part)."""
    standard, advice = next(t for c, t in _TEMPLATES.items() if issubclass(cls, c))
    what = what or standard
    label = upstream.label
    message = what.format(label=label, Label=label[0].upper() + label[1:])
    if status is not None:
        message += f" (HTTP {status})"
    if detail:
        message += f": {upstream.scrub(detail)}"
    if retry_after is not None and cls is UpstreamRateLimited:
        advice = f"; retry in {retry_after:g} s"
    return cls(
        message + advice,
        provider=upstream.provider,
        status=status,
        retry_after=retry_after,
    )


def ended_early(upstream: Upstream) -> UpstreamUnavailable:
    """The stream closed cleanly but without the provider's end-of-answer marker."""
    label = upstream.label
    return UpstreamUnavailable(
        f"{label[0].upper()}{label[1:]} ended the stream before the answer was complete; "
        "retry later",
        provider=upstream.provider,
    )


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or HTTP date), or None."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now is None else now
    return max(0.0, round(when.timestamp() - now, 3))


_ERROR_TYPES: dict[str, type[UpstreamError]] = {
    "authentication_error": UpstreamAuthError,
    "permission_error": UpstreamAuthError,
    "invalid_api_key": UpstreamAuthError,
    "rate_limit_error": UpstreamRateLimited,
    "rate_limit_exceeded": UpstreamRateLimited,
    "overloaded_error": UpstreamUnavailable,
    "api_error": UpstreamUnavailable,
    "server_error": UpstreamUnavailable,
    "timeout_error": UpstreamTimeout,
}


def _error_object(body: object) -> dict[str, Any]:
    """The ``error`` member of an error body (Anthropic nests it, OpenAI's stream errors don't)."""
    if isinstance(body, dict):
        inner = body.get("error")
        return inner if isinstance(inner, dict) else body
    return {}


def from_error_type(exc: BaseException, upstream: Upstream) -> UpstreamError:
    """An error reported inside a stream, classified by its ``error.type`` (or ``code``)."""
    return stream_error(getattr(exc, "body", None), upstream)


def stream_error(body: object, upstream: Upstream) -> UpstreamError:
    """The error event ``body`` of a stream (its ``error`` member, or itself), classified."""
    error = _error_object(body)
    kind = str(error.get("type") or error.get("code") or "")
    cls = _ERROR_TYPES.get(kind, UpstreamError)
    detail = kind if cls is not UpstreamError else str(error.get("message") or kind)
    return make(cls, upstream, detail=detail, what="{Label} reported an error mid-stream")


def from_status(exc: BaseException, upstream: Upstream) -> UpstreamError:
    """An SDK status error (it has ``status_code``, ``response`` and ``body``)."""
    status: int = getattr(exc, "status_code", 0)
    if status < 400:
        # An ``event: error`` inside a stream that began with 200.
        return from_error_type(exc, upstream)
    response = getattr(exc, "response", None)
    headers = response.headers if response is not None else {}
    return status_error(status, headers, getattr(exc, "body", None), upstream)


def status_error(
    status: int, headers: Mapping[str, str], body: object, upstream: Upstream
) -> UpstreamError:
    """The error for a response of ``status`` (not 2xx) with ``headers`` and decoded ``body``."""
    if status in (401, 403):
        return make(UpstreamAuthError, upstream, status=status)
    if status == 429:
        retry_after = parse_retry_after(headers)
        return make(UpstreamRateLimited, upstream, status=status, retry_after=retry_after)
    if status in (408, 504):
        return make(UpstreamTimeout, upstream, status=status)
    if status >= 500:
        return make(UpstreamUnavailable, upstream, status=status, what="{Label} is unavailable")
    error = _error_object(body)
    return make(UpstreamError, upstream, status=status, detail=str(error.get("message") or ""))


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and len(chain) < 10:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain


def from_timeout(exc: BaseException, upstream: Upstream) -> UpstreamError:
    """A timeout, unless its causes show a failure that is not one (a refused connection)."""
    for cause in _causes(exc)[1:]:
        if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
            break
        if isinstance(cause, aiohttp.ClientError | OSError):
            return make(UpstreamUnavailable, upstream)
    return make(UpstreamTimeout, upstream)


TRANSPORT: dict[type[BaseException], Target] = {
    httpx2.TimeoutException: from_timeout,
    httpx2.TransportError: UpstreamUnavailable,
    aiohttp.ServerTimeoutError: UpstreamTimeout,
    aiohttp.ClientError: UpstreamUnavailable,
    anyio.EndOfStream: UpstreamUnavailable,
    ssl.SSLError: UpstreamUnavailable,
    json.JSONDecodeError: UpstreamProtocolError,
    pydantic.ValidationError: UpstreamProtocolError,
}
"""Entries every provider's table ends with: transport failures and undecodable data."""


class ExceptionMap:
    """A reusable guard: ``with guard: ...`` re-raises mapped exceptions as upstream errors.

    :class:`UpstreamError` and anything the table does not name (bugs,
    ``CancelledError``) pass through untouched.
    """

    def __init__(self, table: Mapping[type[BaseException], Target], upstream: Upstream) -> None:
        self._table = table
        self.upstream = upstream

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, UpstreamError):
            return
        for cls, target in self._table.items():
            if isinstance(exc, cls):
                raise self.translate(exc, target) from None

    def translate(self, exc: BaseException, target: Target) -> UpstreamError:
        if isinstance(target, type):
            return make(target, self.upstream)
        return target(exc, self.upstream)


def map_exceptions(table: Mapping[type[BaseException], Target], upstream: Upstream) -> ExceptionMap:
    """A guard translating the exceptions in ``table`` (first match wins) for ``upstream``."""
    return ExceptionMap(table, upstream)
