"""Plain HTTP on the WebSocket port: health, readiness, the web UI, and handshake checks.

``process_request`` runs before every handshake. It answers ordinary HTTP
requests itself, refuses browser handshakes from foreign origins (403) and
authenticates handshakes carrying ``Authorization: Bearer`` (401 if bad).
"""

from __future__ import annotations

import mimetypes
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.errors import GatewayError, Unauthenticated

if TYPE_CHECKING:
    from gateway.server.app import Gateway

__all__ = ["WS_PATH", "HttpRoutes"]

WS_PATH = "/ws"

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


def _json(status: HTTPStatus, payload: object) -> Response:
    return _response(status, orjson.dumps(payload), "application/json")


class HttpRoutes:
    def __init__(self, gateway: Gateway, web_root: Path) -> None:
        self._gateway = gateway
        self._web_root = web_root.resolve()

    def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path == WS_PATH and upgrade:
            return self._handshake(connection, request)
        if path == "/healthz":
            return _json(HTTPStatus.OK, self._gateway.health())
        if path == "/readyz":
            ready, body = self._gateway.readiness()
            return _json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body)
        return self._static(path)

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._gateway.draining:
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "server draining; reconnect"})
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request.headers.get("Host")):
            return _json(HTTPStatus.FORBIDDEN, {"error": "origin not allowed"})
        if self._gateway.connection_count >= self._gateway.config.server.max_connections:
            return None  # accepted, then closed with 1013 by the handler
        authorization = request.headers.get("Authorization")
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise Unauthenticated("Use the Authorization: Bearer <token> scheme")
            identity = self._gateway.authenticator.authenticate(token.strip())
        except GatewayError as exc:
            return _json(HTTPStatus.UNAUTHORIZED, {"error": exc.to_error()})
        self._gateway.pending_identities[connection] = identity
        return None

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        allowed = self._gateway.config.server.allowed_origins
        if origin in allowed or "*" in allowed:
            return True
        netloc = urlsplit(origin).netloc
        return host is not None and netloc == host

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
