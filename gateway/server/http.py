"""Plain HTTP on the WebSocket port: health, readiness, metrics, the web UI, and handshake checks.

``process_request`` runs before every handshake. It answers ordinary HTTP
requests itself, refuses browser handshakes from foreign origins (403) and
authenticates handshakes carrying ``Authorization: Bearer`` (401 if bad).

It is strict where HTTP says so: only GET and HEAD (405 otherwise, with
``Allow``), HEAD answers carry no body, exactly one ``Host`` (400; HTTP/1.0
may omit it), at most one ``Origin`` (403) and ``Authorization`` (401).
Requests websockets cannot parse (a body, a non-ASCII target) get 400 from
:mod:`gateway.server.transport`.
"""

from __future__ import annotations

import dataclasses
import mimetypes
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import Request, Response

from gateway import metrics
from gateway.auth.throttle import LoginThrottled
from gateway.errors import GatewayError, Unauthenticated
from gateway.server import telemetry

if TYPE_CHECKING:
    from gateway.server.app import Gateway

__all__ = ["METRICS_PATH", "WS_PATH", "HttpRoutes", "metrics_only"]

WS_PATH = "/ws"
METRICS_PATH = "/metrics"

_SECURITY_HEADERS = {
    # No inline script can run in the UI, whatever a model writes.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _response(
    status: HTTPStatus, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-cache"
    for name, value in (extra or {}).items():
        headers[name] = value
    return Response(status.value, status.phrase, headers, body)


def _json(status: HTTPStatus, payload: object, extra: dict[str, str] | None = None) -> Response:
    return _response(status, orjson.dumps(payload), "application/json", extra)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, the port made explicit; None otherwise."""
    try:
        parts = urlsplit(origin.strip())
        scheme, host, port = parts.scheme.lower(), (parts.hostname or ""), parts.port
    except ValueError:
        return None
    if scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def _host_matches(key: tuple[str, str, int], host: str) -> bool:
    """The origin ``key`` names this server as reached through ``host`` (the Host header)."""
    try:
        parts = urlsplit(f"//{host.strip()}")
        name, port = parts.hostname or "", parts.port
    except ValueError:
        return False
    scheme, origin_host, origin_port = key
    # A Host without a port came on the scheme's default port (behind a proxy: 80 or 443).
    return origin_host == name and origin_port == (port or _DEFAULT_PORTS[scheme])


def _metrics() -> Response:
    return _response(HTTPStatus.OK, metrics.exposition(), metrics.CONTENT_TYPE)


def metrics_only(connection: ServerConnection, request: Request) -> Response:
    """``process_request`` of the separate metrics port: /metrics, nothing else."""
    if urlsplit(request.path).path == METRICS_PATH:
        return _metrics()
    return _json(HTTPStatus.NOT_FOUND, {"error": "not found"})


class HttpRoutes:
    def __init__(self, gateway: Gateway, web_root: Path) -> None:
        self._gateway = gateway
        self._web_root = web_root.resolve()

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        method = request.method
        if method not in ("GET", "HEAD"):
            return _json(
                HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET"}, {"Allow": "GET, HEAD"}
            )
        hosts = request.headers.get_all("Host")
        if len(hosts) > 1 or (not hosts and request.protocol != "HTTP/1.0"):
            return _json(HTTPStatus.BAD_REQUEST, {"error": "send exactly one Host header"})
        try:
            response = self._route(connection, request)
        except MultipleValuesError as exc:
            # Any other header that may appear once (e.g. Upgrade) appeared twice.
            return _json(HTTPStatus.BAD_REQUEST, {"error": f"duplicate header {exc}"})
        if method == "HEAD" and response is not None:
            # Same status and headers (Content-Length included) as GET, no body.
            response = dataclasses.replace(response, body=b"")
        return response

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path == WS_PATH and upgrade and request.method == "GET":
            return self._handshake(connection, request)
        if path == "/healthz":
            return _json(HTTPStatus.OK, self._gateway.health())
        if path == "/readyz":
            ready, body = self._gateway.readiness()
            return _json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body)
        if path == METRICS_PATH and self._gateway.config.server.metrics_port is None:
            return _metrics()
        return self._static(path)

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._gateway.draining:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "server draining; reconnect"})
        origins = request.headers.get_all("Origin")
        if len(origins) > 1 or (
            origins and not self._origin_allowed(origins[0], request.headers.get("Host"))
        ):
            telemetry.rejected("origin")
            return _json(HTTPStatus.FORBIDDEN, {"error": "origin not allowed"})
        if self._gateway.connection_count >= self._gateway.config.server.max_connections:
            return None  # accepted, then closed with 1013 by the handler
        authorizations = request.headers.get_all("Authorization")
        if not authorizations:
            return None
        if len(authorizations) > 1:
            error = Unauthenticated("Send one Authorization header")
            return _json(HTTPStatus.UNAUTHORIZED, {"error": error.to_error()})
        authorization = authorizations[0]
        scheme, _, token = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise Unauthenticated("Use the Authorization: Bearer <token> scheme")
            address = connection.remote_address
            source = str(address[0]) if address else None
            identity = self._gateway.authenticator.login(token.strip(), source)
        except LoginThrottled as exc:
            telemetry.rejected("throttled")
            telemetry.auth_failed("handshake", exc)
            return _json(
                HTTPStatus.TOO_MANY_REQUESTS,
                {"error": exc.to_error()},
                {"Retry-After": str(exc.retry_after)},
            )
        except GatewayError as exc:
            telemetry.rejected("unauthenticated")
            telemetry.auth_failed("handshake", exc)
            return _json(HTTPStatus.UNAUTHORIZED, {"error": exc.to_error()})
        self._gateway.pending_identities[connection] = identity
        return None

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        """Same origin as ``host``, or listed in ``allowed_origins`` (scheme + host + port)."""
        allowed = self._gateway.config.server.allowed_origins
        if "*" in allowed:
            return True
        key = _origin_key(origin)
        if key is None:
            return False  # "null", file://, chrome-extension://, garbage
        if key in {_origin_key(entry) for entry in allowed}:
            return True
        return host is not None and _host_matches(key, host)

    def _static(self, path: str) -> Response:
        relative = unquote(path).lstrip("/") or "index.html"
        target = self._web_root / relative
        try:
            target = target.resolve()
            found = target.is_relative_to(self._web_root) and target.is_file()
        except (OSError, ValueError):
            # A NUL byte (ValueError) or a name too long (OSError) names no file we serve.
            found = False
        if not found:
            return _json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        return _response(HTTPStatus.OK, target.read_bytes(), content_type, _SECURITY_HEADERS)
